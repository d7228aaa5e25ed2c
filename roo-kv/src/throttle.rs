//! Warnings that may repeat many times a second (a peer down, a stranger knocking) logged once
//! per interval, with the count of those left out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of repeated warning.
pub struct Throttle {
    every: Duration,
    /// When the last line went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Some(n) when a line may go out now (n lines were held back since the last one); None
    /// when it must be held back.
    pub fn ready(&self) -> Option<u64> {
        // Held for two field updates; a poisoned lock still holds a usable count.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(at) if now.duration_since(at) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// Like [`Throttle`], one interval for each key (a host, a peer): a warning about one does not
/// hold back a warning about another. Keys seen last more than an interval ago are forgotten
/// when the table grows, so that it stays small whatever the keys; while it is full of recent
/// ones, new keys are held back.
pub struct Throttles {
    every: Duration,
    state: Mutex<Option<HashMap<String, (Instant, u64)>>>,
}

/// Keys past which stale ones are forgotten.
const KEYS_KEPT: usize = 1024;

impl Throttles {
    pub const fn new(every: Duration) -> Self {
        Throttles {
            every,
            state: Mutex::new(None),
        }
    }

    /// [`Throttle::ready`] for `key`.
    pub fn ready(&self, key: &str) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let keys = state.get_or_insert_with(HashMap::new);
        let now = Instant::now();
        if let Some((at, held)) = keys.get_mut(key) {
            if now.duration_since(*at) < self.every {
                *held += 1;
                return None;
            }
            let out = *held;
            *at = now;
            *held = 0;
            return Some(out);
        }
        if keys.len() >= KEYS_KEPT {
            keys.retain(|_, (at, _)| now.duration_since(*at) < self.every);
            if keys.len() >= KEYS_KEPT {
                // That many keys warned about within one interval: the log has enough to say.
                return None;
            }
        }
        keys.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_an_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.ready(), Some(2));
        assert_eq!(t.ready(), None);
    }

    #[test]
    fn each_key_has_its_own_interval_and_the_table_stays_small() {
        let t = Throttles::new(Duration::from_millis(50));
        assert_eq!(t.ready("a"), Some(0));
        assert_eq!(t.ready("b"), Some(0), "another key is not held back");
        assert_eq!(t.ready("a"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.ready("a"), Some(1));
        // Filling the table must take less than one interval, however loaded the machine.
        let t = Throttles::new(Duration::from_secs(2));
        for i in 0..KEYS_KEPT * 3 {
            t.ready(&i.to_string());
        }
        let kept = t.state.lock().unwrap().as_ref().map_or(0, HashMap::len);
        assert!(kept <= KEYS_KEPT, "{kept} keys kept");
        assert_eq!(
            t.ready("one more"),
            None,
            "held back while the table is full"
        );
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(t.ready("one more"), Some(0), "stale keys made room");
    }
}
