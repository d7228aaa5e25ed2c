//! Keeping each proxy worker thread on a CPU of its own (`--proxy-cpu-affinity auto`).

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the calling thread may run on (those of the process, unless it was pinned), in
/// order: what a container's cpuset or `taskset` left rood.
pub fn allowed() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Keeps the calling thread on `cpu`.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// The CPU of each of `workers` workers: the allowed ones in turn (none when none is).
pub fn plan(allowed: &[usize], workers: usize) -> Vec<usize> {
    allowed.iter().copied().cycle().take(workers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_allowed_cpus_in_turn() {
        assert_eq!(plan(&[2, 5], 3), [2, 5, 2]);
        assert_eq!(plan(&[0, 1, 2, 3], 2), [0, 1]);
        assert!(plan(&[], 2).is_empty());
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_alone() {
        let all = allowed().unwrap();
        assert!(!all.is_empty());
        let last = *all.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            allowed().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
        // The other threads keep every CPU.
        assert_eq!(allowed().unwrap(), all);
        assert!(pin_current_thread(CpuSet::count()).is_err());
    }
}
