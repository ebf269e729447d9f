//! A child process that can read only its input file and what exec needs (/usr, /lib*, the
//! loader's cache), write only its output file, and open no TCP connection nor reach any
//! abstract unix socket: Landlock, applied to a fresh thread that then spawns the child (a
//! Landlock domain binds the thread that enforces it and its future children, never the
//! rest of the worker). /dev/null is open to it too (std opens it for a null stdio). The
//! caller's command sets its own resource limits (`prlimit`).

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use tokio::process::{Child, Command};

/// The newest Landlock ABI this code knows; older kernels enforce what they can.
const ABI_WANTED: ABI = ABI::V6;

/// What exec and the dynamic loader read.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
];

#[derive(Debug, thiserror::Error)]
pub(super) enum SandboxError {
    #[error(
        "this kernel has no Landlock, so qemu-img cannot be confined to the image: set \
         worker.allow_unsandboxed_conversion to convert anyway"
    )]
    Unavailable,
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
    #[error("the program could not be started: {0}")]
    Spawn(std::io::Error),
}

/// Spawns `command` confined to reading `input` and writing `output` (which must exist).
/// Without Landlock it refuses, unless `allow_unsandboxed`.
pub(super) async fn spawn_confined(
    mut command: Command,
    input: &Path,
    output: &Path,
    allow_unsandboxed: bool,
) -> Result<Child, SandboxError> {
    let (input, output) = (input.to_path_buf(), output.to_path_buf());
    let runtime = tokio::runtime::Handle::current();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // A thread of its own, ended after the spawn: no other work ever runs confined.
    std::thread::spawn(move || {
        let _runtime = runtime.enter();
        let spawned = confine_this_thread(&input, &output, allow_unsandboxed)
            .and_then(|()| command.spawn().map_err(SandboxError::Spawn));
        let _ = sender.send(spawned);
    });
    receiver
        .await
        .map_err(|_| SandboxError::Setup("the sandbox thread ended early".into()))?
}

fn confine_this_thread(
    input: &Path,
    output: &Path,
    allow_unsandboxed: bool,
) -> Result<(), SandboxError> {
    let setup = |e: landlock::RulesetError| SandboxError::Setup(e.to_string());
    let system: Vec<PathBuf> = SYSTEM_PATHS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    let output_access = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&system, AccessFs::from_read(ABI_WANTED))))
        .and_then(|r| r.add_rules(path_beneath_rules([input], AccessFs::ReadFile)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                [output, Path::new("/dev/null")],
                output_access,
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(setup)?;
    enforced_or_allowed(status.ruleset, allow_unsandboxed)
}

/// Fail closed: a kernel that enforced nothing runs nothing, unless the operator allows it.
fn enforced_or_allowed(status: RulesetStatus, allow_unsandboxed: bool) -> Result<(), SandboxError> {
    match status {
        RulesetStatus::NotEnforced if !allow_unsandboxed => Err(SandboxError::Unavailable),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
        input: PathBuf,
        output: PathBuf,
    }

    fn files() -> Files {
        let dir = std::env::temp_dir().join(format!("pimage-sandbox-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("input"), dir.join("output"));
        std::fs::write(&input, b"the image").unwrap();
        std::fs::write(&output, b"").unwrap();
        Files { dir, input, output }
    }

    async fn run(files: &Files, script: &str) -> std::process::Output {
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", script])
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = spawn_confined(command, &files.input, &files.output, false)
            .await
            .unwrap();
        child.wait_with_output().await.unwrap()
    }

    #[tokio::test]
    async fn the_child_reads_only_its_input_and_writes_only_its_output() {
        let f = files();
        let read = run(&f, &format!("cat {}", f.input.display())).await;
        assert_eq!(read.stdout, b"the image", "{read:?}");
        let copied = run(
            &f,
            &format!("cat {} > {}", f.input.display(), f.output.display()),
        )
        .await;
        assert!(copied.status.success(), "{copied:?}");
        assert_eq!(std::fs::read(&f.output).unwrap(), b"the image");
        for denied in [
            "cat /etc/passwd".to_string(),
            format!("ls {}", f.dir.display()),
            format!("echo x > {}", f.dir.join("other").display()),
            format!("echo x > {}", f.input.display()),
        ] {
            let out = run(&f, &denied).await;
            assert!(!out.status.success(), "{denied}: {out:?}");
            assert!(out.stdout.is_empty(), "{denied}: {out:?}");
        }
        assert_eq!(std::fs::read(&f.input).unwrap(), b"the image");
        assert!(!f.dir.join("other").exists());
        std::fs::remove_dir_all(&f.dir).unwrap();
    }

    #[tokio::test]
    async fn the_child_opens_no_tcp_connection() {
        let f = files();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        // bash opens /dev/tcp/… itself: a plain connect(2).
        let out = run(
            &f,
            &format!("exec bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'"),
        )
        .await;
        assert!(!out.status.success(), "{out:?}");
        assert!(listener.accept().is_err(), "no connection was accepted");
        std::fs::remove_dir_all(&f.dir).unwrap();
    }

    #[test]
    fn without_landlock_nothing_runs_unless_allowed() {
        let refused = enforced_or_allowed(RulesetStatus::NotEnforced, false).unwrap_err();
        assert!(refused
            .to_string()
            .contains("set worker.allow_unsandboxed_conversion to convert anyway"));
        assert!(enforced_or_allowed(RulesetStatus::NotEnforced, true).is_ok());
        assert!(enforced_or_allowed(RulesetStatus::PartiallyEnforced, false).is_ok());
        assert!(enforced_or_allowed(RulesetStatus::FullyEnforced, false).is_ok());
    }

    #[tokio::test]
    async fn the_rest_of_the_process_stays_unconfined() {
        let f = files();
        run(&f, "true").await;
        assert!(std::fs::read("/etc/passwd").is_ok());
        std::fs::remove_dir_all(&f.dir).unwrap();
    }
}
