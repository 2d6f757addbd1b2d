//! The kernel's rules for FUSE passthrough on one inode, kept per inode
//! so that no open the mount answers is one the kernel then fails
//! (`fs/fuse/iomode.c`):
//!
//! - while any open of an inode is passthrough, every other open of it
//!   must be passthrough too, with the same backing file, or it fails
//!   with EIO (a direct-I/O open included);
//! - while any buffered (page-cached) open lives, a passthrough open fails
//!   (ETXTBSY, reported as EIO);
//! - direct-I/O opens mix with buffered ones, and with none.
//!
//! A backing id is registered at the first passthrough open of an inode
//! and closed when its last such open is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the backend asks for an open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Nothing for the daemon to add: the kernel may read the file.
    Passthrough,
    /// Reads reach the daemon through the page cache.
    Buffered,
    /// Reads reach the daemon as made (direct I/O).
    Direct,
}

/// What the open gets.
#[derive(Debug)]
pub enum Granted<B> {
    /// Reply with this backing id. `held`: the backend wanted otherwise,
    /// but the file is open by passthrough already.
    Passthrough { backing: Arc<B>, held: bool },
    /// Buffered, and why, when passthrough was wanted.
    Buffered { refused: Option<String> },
    /// As the backend asked, with nothing to keep: a direct-I/O open,
    /// which the kernel mixes with buffered ones (or any open of a mount
    /// with no passthrough at all).
    Untracked,
    /// The file was replaced while an open of the old one reads it by
    /// passthrough: the kernel allows this inode no other backing file,
    /// and no open that is not passthrough.
    Busy,
}

/// How an open was answered, to be given back at its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    Passthrough,
    Buffered,
    Untracked,
}

impl<B> Granted<B> {
    pub fn opened(&self) -> Opened {
        match self {
            Granted::Passthrough { .. } => Opened::Passthrough,
            Granted::Buffered { .. } => Opened::Buffered,
            Granted::Untracked | Granted::Busy => Opened::Untracked,
        }
    }
}

enum Live<B> {
    Passthrough {
        backing: Arc<B>,
        /// Device and inode of the file behind `backing`.
        file: (u64, u64),
        opens: usize,
    },
    Buffered {
        opens: usize,
    },
}

/// Live opens per FUSE inode. `B` is the backing id (fuser's `BackingId`;
/// a plain value in unit tests).
pub struct IoModes<B> {
    inodes: Mutex<HashMap<u64, Live<B>>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inodes: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> IoModes<B> {
    /// Decides an open of inode `ino`, whose file is `file` (device,
    /// inode), for which the backend wants `wanted`. `register` makes the
    /// backing id, called only when a passthrough open finds none to share.
    /// The lock is held across it, so two opens never register twice.
    pub fn open(
        &self,
        ino: u64,
        file: (u64, u64),
        wanted: Wanted,
        register: impl FnOnce() -> std::io::Result<B>,
    ) -> Granted<B> {
        let mut inodes = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        match inodes.get_mut(&ino) {
            Some(Live::Passthrough {
                backing,
                file: held,
                opens,
            }) => {
                if *held != file {
                    return Granted::Busy;
                }
                *opens += 1;
                Granted::Passthrough {
                    backing: backing.clone(),
                    held: wanted != Wanted::Passthrough,
                }
            }
            Some(Live::Buffered { opens }) => match wanted {
                Wanted::Direct => Granted::Untracked,
                Wanted::Buffered => {
                    *opens += 1;
                    Granted::Buffered { refused: None }
                }
                Wanted::Passthrough => {
                    *opens += 1;
                    Granted::Buffered {
                        refused: Some("the file is open with page caching".into()),
                    }
                }
            },
            None => match wanted {
                Wanted::Direct => Granted::Untracked,
                Wanted::Buffered => {
                    inodes.insert(ino, Live::Buffered { opens: 1 });
                    Granted::Buffered { refused: None }
                }
                Wanted::Passthrough => match register() {
                    Ok(backing) => {
                        let backing = Arc::new(backing);
                        inodes.insert(
                            ino,
                            Live::Passthrough {
                                backing: backing.clone(),
                                file,
                                opens: 1,
                            },
                        );
                        Granted::Passthrough {
                            backing,
                            held: false,
                        }
                    }
                    Err(e) => {
                        inodes.insert(ino, Live::Buffered { opens: 1 });
                        Granted::Buffered {
                            refused: Some(format!("registering the backing file: {e}")),
                        }
                    }
                },
            },
        }
    }

    /// An open of `ino` answered as `opened` was released. The last
    /// passthrough one drops the backing id (closing it in the kernel).
    pub fn release(&self, ino: u64, opened: Opened) {
        let mut inodes = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        let last = match (inodes.get_mut(&ino), opened) {
            (Some(Live::Passthrough { opens, .. }), Opened::Passthrough)
            | (Some(Live::Buffered { opens }), Opened::Buffered) => {
                *opens -= 1;
                *opens == 0
            }
            _ => false,
        };
        if last {
            inodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const F: (u64, u64) = (1, 10);

    fn ok(id: u32) -> impl FnOnce() -> io::Result<u32> {
        move || Ok(id)
    }

    fn never() -> io::Result<u32> {
        panic!("registered a second backing id")
    }

    fn backing(g: &Granted<u32>) -> Option<(u32, bool)> {
        match g {
            Granted::Passthrough { backing, held } => Some((**backing, *held)),
            _ => None,
        }
    }

    #[test]
    fn opens_share_one_backing_id_until_the_last_is_released() {
        let modes = IoModes::default();
        let a = modes.open(5, F, Wanted::Passthrough, ok(7));
        assert_eq!(backing(&a), Some((7, false)));
        let b = modes.open(5, F, Wanted::Passthrough, never);
        assert_eq!(backing(&b), Some((7, false)));
        // The file gained a boot image: the kernel would fail a direct open.
        let c = modes.open(5, F, Wanted::Direct, never);
        assert_eq!(backing(&c), Some((7, true)));
        let held = match &a {
            Granted::Passthrough { backing, .. } => Arc::downgrade(backing),
            _ => unreachable!(),
        };
        drop((a, b, c));
        for _ in 0..2 {
            modes.release(5, Opened::Passthrough);
            assert!(held.upgrade().is_some(), "closed while open");
        }
        modes.release(5, Opened::Passthrough);
        assert!(
            held.upgrade().is_none(),
            "the backing id outlived its opens"
        );
        // Then the boot image serves.
        assert!(matches!(
            modes.open(5, F, Wanted::Direct, never),
            Granted::Untracked
        ));
        assert_eq!(
            backing(&modes.open(5, F, Wanted::Passthrough, ok(8))),
            Some((8, false))
        );
    }

    #[test]
    fn a_buffered_open_keeps_passthrough_off_and_direct_mixes() {
        let modes = IoModes::default();
        assert!(matches!(
            modes.open(5, F, Wanted::Buffered, never),
            Granted::Buffered { refused: None }
        ));
        assert!(matches!(
            modes.open(5, F, Wanted::Passthrough, never),
            Granted::Buffered { refused: Some(_) }
        ));
        assert!(matches!(
            modes.open(5, F, Wanted::Direct, never),
            Granted::Untracked
        ));
        // Other inodes are free.
        assert!(backing(&modes.open(6, F, Wanted::Passthrough, ok(1))).is_some());
        modes.release(5, Opened::Buffered);
        modes.release(5, Opened::Buffered);
        assert!(backing(&modes.open(5, F, Wanted::Passthrough, ok(2))).is_some());
    }

    #[test]
    fn a_refused_registration_falls_back_to_buffered() {
        let modes = IoModes::<u32>::default();
        let g = modes.open(5, F, Wanted::Passthrough, || {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(matches!(g, Granted::Buffered { refused: Some(_) }));
        assert_eq!(g.opened(), Opened::Buffered);
    }

    #[test]
    fn a_replaced_file_is_busy_while_the_old_one_is_passed_through() {
        let modes = IoModes::default();
        assert!(backing(&modes.open(5, F, Wanted::Passthrough, ok(1))).is_some());
        for wanted in [Wanted::Passthrough, Wanted::Buffered, Wanted::Direct] {
            assert!(matches!(
                modes.open(5, (1, 11), wanted, never),
                Granted::Busy
            ));
        }
        modes.release(5, Opened::Passthrough);
        assert_eq!(
            backing(&modes.open(5, (1, 11), Wanted::Passthrough, ok(2))),
            Some((2, false))
        );
    }
}
