//! When to try a host again after a failure.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with jitter: `base * 2^(failures-1)`, capped at `max`, then spread by
/// ±20% so that many hosts failing together do not retry together.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let plain = base.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    plain.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        for (failures, plain) in [(1, 60), (2, 120), (3, 240), (7, 3600), (40, 3600)] {
            let d = backoff(failures, base, max).as_secs_f64();
            let plain = plain as f64;
            assert!(d >= plain * 0.8 && d <= plain * 1.2, "{failures}: {d}");
        }
    }
}
