//! The lab variant for server-side copies: Glance with two stores (`fast`, the default, and
//! `cold`) and a second Glance in RegionTwo under the same Keystone, on ports of its own;
//! started by the project's script, purged when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct CopiesLab {
    pub dir: PathBuf,
    /// Keystone, Glance (RegionOne) and RegionTwo's Glance.
    pub ports: (u16, u16, u16),
}

impl CopiesLab {
    /// The lab script with this variant's environment.
    pub fn command(dir: &Path, ports: (u16, u16, u16), args: &[&str]) -> Command {
        let mut c = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/openstack-lab"
        ));
        c.args(args)
            .env("PIMAGE_LAB_DIR", dir)
            .env(
                "PIMAGE_LAB_VENV",
                concat!(env!("CARGO_MANIFEST_DIR"), "/.lab/venv"),
            )
            .env("PIMAGE_LAB_KEYSTONE_PORT", ports.0.to_string())
            .env("PIMAGE_LAB_GLANCE_PORT", ports.1.to_string())
            .env("PIMAGE_LAB_SECOND_GLANCE", format!("RegionTwo={}", ports.2))
            .env("PIMAGE_LAB_STORES", "fast,cold");
        c
    }

    pub fn up(ports: (u16, u16, u16)) -> CopiesLab {
        let dir = std::env::temp_dir().join(format!("pimage-lab-copies-{}", uuid::Uuid::new_v4()));
        let lab = CopiesLab { dir, ports };
        let out = CopiesLab::command(&lab.dir, ports, &["up"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "copies lab up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn keystone(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.ports.0)
    }

    /// A group's target: the demo project in `region`, into `store` if given.
    pub fn target(&self, name: &str, region: &str, store: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "displayName": name, "publicImage": false, "publishLocation": region,
            "keystoneDomain": "Default", "keystoneProject": "demo",
            "credAccount": {"targetPlatform": {"name": "openstack"}, "keystoneUrl": self.keystone(),
                "keystoneVersion": "v3", "login": "demo", "password": "demopass"}});
        if let Some(store) = store {
            body["store"] = store.into();
        }
        body
    }

    /// `glance` (RegionOne) or `glance2` (RegionTwo).
    pub fn glance(&self, which: &str) -> String {
        let port = if which == "glance2" {
            self.ports.2
        } else {
            self.ports.1
        };
        format!("http://127.0.0.1:{port}")
    }

    /// The bytes a Glance (`glance` or `glance2`) keeps of an image in a store, if any.
    pub fn stored(&self, glance: &str, store: &str, image_id: &str) -> Option<Vec<u8>> {
        let path = self
            .dir
            .join("openstack")
            .join(glance)
            .join("images")
            .join(store)
            .join(image_id);
        std::fs::read(path).ok()
    }

    /// Image data requests (`PUT …/file` or `…/stage`) both Glances received, as their uwsgi
    /// logged them: the uploads of the file, whoever sent them.
    pub fn uploads(&self) -> usize {
        self.upload_lines().len()
    }

    /// Those requests' log lines (`glance: …` or `glance2: …`).
    pub fn upload_lines(&self) -> Vec<String> {
        let mut lines = vec![];
        for g in ["glance", "glance2"] {
            let log = self
                .dir
                .join("openstack")
                .join("log")
                .join(format!("{g}-uwsgi.log"));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            lines.extend(
                text.lines()
                    .filter(|l| {
                        l.contains("PUT /v2/images/")
                            && (l.contains("/file ") || l.contains("/stage "))
                    })
                    .map(|l| format!("{g}: {l}")),
            );
        }
        lines
    }
}

impl Drop for CopiesLab {
    fn drop(&mut self) {
        let _ = CopiesLab::command(&self.dir, self.ports, &["down", "--purge"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
