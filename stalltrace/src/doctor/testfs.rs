//! Fixture trees for the doctor's tests: a private directory standing for `/`, with the
//! /sys and /proc files a test writes into it.
use std::path::PathBuf;

use stalltrace_testkit::scratch::Scratch;

use super::Roots;

pub struct Tree {
    dir: Scratch,
}

impl Tree {
    pub fn new(tag: &str) -> Self {
        Self {
            dir: Scratch::new(&format!("doctor-{tag}")).unwrap(),
        }
    }

    /// Both roots at this tree.
    pub fn roots(&self) -> Roots {
        Roots::new(self.dir.path(), self.dir.path())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// Writes `text` at `rel`, making its directories.
    pub fn file(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.path(rel)).unwrap();
        self
    }
}
