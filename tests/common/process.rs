//! A running `atb` process for tests that start several (`atb dev`, replicas
//! from its files): logs in files, readiness by its own words and probes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::curl;

/// A running `atb` process, killed on drop.
pub struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, logs: &Path, name: &str) -> Self {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        cmd.env_remove("ATB_CONFIG")
            .env_remove("ATB_DEV_REDIS")
            .env("LOG_FORMAT", "json")
            .env("ATB_WORKERS", "1")
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        Self {
            child: cmd.spawn().unwrap(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// JSON lines of its stdout (the audit sink in dev).
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until it said `started` and every `ready` URL answers 200;
    /// `false` if it exited because a port was taken.
    pub fn wait_ready(&mut self, started: &[&str], ready: &[String]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err = self.stderr();
                if err.contains("Address already in use") {
                    return false;
                }
                panic!("atb exited ({status}): {err}");
            }
            let err = self.stderr();
            if started.iter().all(|s| err.contains(s))
                && ready.iter().all(|u| {
                    let a = curl(&[u]);
                    a.status == 200
                        && (a.json()["ready"] == json!(true)
                            || a.json()["status"] == json!("ready"))
                })
            {
                return true;
            }
            assert!(Instant::now() < deadline, "not ready: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
