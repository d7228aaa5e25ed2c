//! An answer's head as the response filters see it, however its fields came: a pooled HTTP/1
//! upstream's as lines ([`Lines`], passed on to HTTP/1 clients as they are), every other
//! answer's (and whatever roo adds) in the header map.

use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::headers::apply_changes;
use super::wire::Lines;
use crate::routes::middleware::FieldChange;

pub struct ResponseHead<'a> {
    pub status: StatusCode,
    headers: &'a mut HeaderMap,
    lines: Option<&'a mut Lines>,
}

impl<'a> ResponseHead<'a> {
    pub fn of(parts: &'a mut Parts) -> ResponseHead<'a> {
        ResponseHead {
            status: parts.status,
            headers: &mut parts.headers,
            lines: parts.extensions.get_mut::<Lines>(),
        }
    }

    /// Whether the route's answer changes were made as the upstream's answer was read: the
    /// lines of a pooled answer are.
    pub fn changed_as_read(&self) -> bool {
        self.lines.is_some()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.lines
            .as_deref()
            .and_then(|l| l.get(name))
            .or_else(|| self.headers.get(name).map(HeaderValue::as_bytes))
    }

    /// Sets (Some) or removes (None) fields, in order: a set field replaces every value of its
    /// name.
    pub fn edit(&mut self, changes: &[FieldChange]) {
        match self.lines.as_deref_mut() {
            Some(lines) => {
                lines.edit(changes);
                if !self.headers.is_empty() {
                    for (name, _) in changes {
                        self.headers.remove(name);
                    }
                }
            }
            None => apply_changes(self.headers, changes),
        }
    }

    /// Adds a value of `name` beside those it has.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        match self.lines.as_deref_mut() {
            Some(lines) => lines.append(&name, &value),
            None => {
                self.headers.append(name, value);
            }
        }
    }
}
