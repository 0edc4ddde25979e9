//! The engine as a process: started (pinned to CPUs when asked), killed when the run
//! ends, and its CPU time (user and system apart) and peak memory read from /proc.

use std::path::Path;
use std::process::{Child, Command};

/// Clock ticks per second of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU and memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    /// CPU seconds in user space: what a real NIC would leave (loopback doubles the
    /// kernel's share, since the kernel both sends and receives every packet).
    pub user_seconds: f64,
    /// CPU seconds in the kernel on the process's behalf.
    pub system_seconds: f64,
    /// Peak resident memory (VmHWM), MB.
    pub peak_rss_mb: f64,
}

impl ProcUsage {
    /// CPU spent between `before` and `self`: (user, system) seconds.
    pub fn since(&self, before: &ProcUsage) -> (f64, f64) {
        (self.user_seconds - before.user_seconds, self.system_seconds - before.system_seconds)
    }
}

/// Parses /proc/PID/stat and /proc/PID/status.
pub fn parse_usage(stat: &str, status: &str) -> Option<ProcUsage> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let hwm_kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcUsage { user_seconds: utime / USER_HZ, system_seconds: stime / USER_HZ, peak_rss_mb: hwm_kb / 1024.0 })
}

pub fn usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_usage(&stat, &status)
}

/// An engine this tool started; killed and reaped when dropped.
pub struct EngineProcess(pub Child);

impl EngineProcess {
    pub fn usage(&self) -> Option<ProcUsage> {
        usage(self.0.id())
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command for the engine binary, pinned to `cpus` when given.
pub fn engine_command(bin: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_and_peak_memory_come_apart() {
        // A name with a space and a parenthesis, as a process may give itself.
        let stat = "4242 (media node) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        let status = "Name:\tmedia-node\nVmPeak:\t 90000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        let u = parse_usage(stat, status).unwrap();
        assert_eq!((u.user_seconds, u.system_seconds), (2.5, 0.75));
        assert_eq!(u.peak_rss_mb, 50.0);
        let later = ProcUsage { user_seconds: 4.0, system_seconds: 1.0, peak_rss_mb: 60.0 };
        assert_eq!(later.since(&u), (1.5, 0.25));
        assert!(parse_usage("garbage", status).is_none());
    }

    #[test]
    fn this_process_can_be_read() {
        let u = usage(std::process::id()).expect("/proc/self is readable");
        assert!(u.peak_rss_mb > 0.0);
    }
}
