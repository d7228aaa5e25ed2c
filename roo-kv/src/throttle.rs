//! Warnings that may repeat many times a second (a peer down, a stranger knocking) logged once
//! per interval, with the count of those left out.

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
}
