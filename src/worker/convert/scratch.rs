//! Scratch space promised to running conversions, so that concurrent ones cannot each see
//! the same free space and all run out of it half-way: a conversion reserves its expanded
//! size (the image's virtual size) before it starts, against the directory's free space less
//! what the others already reserved, and gives it back when its attempt ends (on drop).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The room a conversion of an image of `virtual_size` bytes reserves: its size plus what a
/// qcow2, VMDK or VHD copy adds as tables and headers (1% and 16 MiB covers them).
pub(super) fn room_for(virtual_size: u64) -> u64 {
    virtual_size
        .saturating_add(virtual_size / 100)
        .saturating_add(16 << 20)
}

/// Bytes reserved per scratch directory.
pub(super) struct Ledger {
    reserved: Mutex<BTreeMap<PathBuf, u64>>,
}

/// The ledger every conversion of this process shares.
pub(super) static LEDGER: Ledger = Ledger::new();

/// Bytes held in one directory until dropped.
pub(super) struct Reservation<'a> {
    ledger: &'a Ledger,
    dir: PathBuf,
    bytes: u64,
}

/// Not enough room: what the directory had free and what others already hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct NoRoom {
    pub(super) free: u64,
    pub(super) reserved: u64,
}

impl Ledger {
    pub(super) const fn new() -> Self {
        Ledger {
            reserved: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reserves `bytes` in `dir`, which has `free` bytes free now, if what is left after the
    /// other reservations covers them.
    pub(super) fn reserve(
        &self,
        dir: &Path,
        bytes: u64,
        free: u64,
    ) -> Result<Reservation<'_>, NoRoom> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let held = reserved.get(dir).copied().unwrap_or(0);
        if bytes > free.saturating_sub(held) {
            return Err(NoRoom {
                free,
                reserved: held,
            });
        }
        *reserved.entry(dir.to_path_buf()).or_default() += bytes;
        Ok(Reservation {
            ledger: self,
            dir: dir.to_path_buf(),
            bytes,
        })
    }

    #[cfg(test)]
    fn held(&self, dir: &Path) -> u64 {
        let reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        reserved.get(dir).copied().unwrap_or(0)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self
            .ledger
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = reserved.get_mut(&self.dir) {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                reserved.remove(&self.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_reserved_covers_the_metadata_of_the_copy() {
        assert_eq!(room_for(0), 16 << 20);
        assert_eq!(room_for(100 << 20), (101 << 20) + (16 << 20));
        assert_eq!(room_for(u64::MAX), u64::MAX);
    }

    #[test]
    fn reservations_add_up_and_are_given_back_on_drop() {
        let ledger = Ledger::new();
        let dir = Path::new("/scratch");
        let first = ledger.reserve(dir, 40, 96).unwrap();
        let second = ledger.reserve(dir, 40, 96).unwrap();
        assert_eq!(
            ledger.reserve(dir, 40, 96).err(),
            Some(NoRoom {
                free: 96,
                reserved: 80
            }),
            "the third does not fit beside the first two"
        );
        assert!(
            ledger.reserve(Path::new("/other"), 40, 96).is_ok(),
            "per directory"
        );
        drop(first);
        assert_eq!(ledger.held(dir), 40);
        assert!(ledger.reserve(dir, 40, 96).is_ok());
        drop(second);
        assert_eq!(ledger.held(dir), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_free_space() {
        let ledger = Ledger::new();
        let dir = Path::new("/scratch");
        let granted = std::thread::scope(|s| {
            let tries: Vec<_> = (0..16)
                .map(|_| s.spawn(|| ledger.reserve(dir, 10, 35).map(std::mem::forget).is_ok()))
                .collect();
            tries
                .into_iter()
                .filter_map(|t| t.join().unwrap().then_some(()))
                .count()
        });
        assert_eq!(granted, 3);
        assert_eq!(ledger.held(dir), 30);
    }
}
