//! VMI names: the relative path of a file inside the images directory. They
//! come from `.yolo` files and command lines, so they are checked before use
//! as a path or a key.

use crate::{Error, Result};

pub const MAX_NAME_LEN: usize = 4096;

/// Accepts a relative path made of normal components: no `..`, `.`, empty
/// components, leading `/`, NULs or control characters.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::Name {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 4096 bytes");
    }
    if name.starts_with('/') {
        return bad("absolute path");
    }
    if name.chars().any(|c| c == '\0') {
        return bad("contains NUL");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    for component in name.split('/') {
        match component {
            "" => return bad("empty path component"),
            "." | ".." => return bad("`.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn accepts_relative_paths() {
        for ok in ["base.qcow2", "chain/base.qcow2", "a..b", ".hidden"] {
            validate_name(ok).unwrap();
        }
    }

    #[test]
    fn rejects_escapes_and_garbage() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "nul\0",
            "tab\t",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(4097)).is_err());
    }
}
