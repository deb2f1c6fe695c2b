//! Processes kvlab starts: whether one still runs, and that it dies with
//! its parent. Plumbing shared by the coordinator (its nodes) and by the
//! tools that run a cluster as a child (`child_cluster`).

use tokio::process::Command;

/// True while the process runs. A zombie (exited, not yet reaped) counts as
/// gone: it holds no port and serves nothing.
pub fn exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Asks the kernel to SIGKILL the child when its parent dies
/// (`PR_SET_PDEATHSIG`), so even a SIGKILLed parent leaves no orphan behind.
/// Every process kvlab starts for a cluster goes through here.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
