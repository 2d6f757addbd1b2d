//! VMI names: the relative path of a file inside the images directory. They
//! come from `.yolo` files and command lines, so they are checked before use
//! as a path or a key.

use crate::{FormatError, Result};

pub const MAX_NAME_LEN: usize = 4096;

/// The virtual status file at the root of a mount; no VMI may take its name.
pub const STATUS_FILE: &str = ".yolo-status";

/// Characters that reorder or hide text on a terminal (bidirectional
/// overrides, embeddings, isolates and marks): a name holding one prints as
/// another name.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Accepts a relative path made of normal components: no `..`, `.`, empty
/// components, leading `/`, NULs or control characters; and nothing that
/// prints as another name: no bidirectional controls, no backslash, no
/// component that starts or ends with white space, and not the mount's own
/// status file.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(FormatError::Name {
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
    if name.chars().any(is_bidi_control) {
        return bad("contains a bidirectional text control");
    }
    if name.contains('\\') {
        return bad("contains a backslash");
    }
    if name == STATUS_FILE {
        return bad("is the mount's status file");
    }
    for component in name.split('/') {
        match component {
            "" => return bad("empty path component"),
            "." | ".." => return bad("`.` or `..` component"),
            c if c.starts_with(char::is_whitespace) || c.ends_with(char::is_whitespace) => {
                return bad("a path component starts or ends with white space")
            }
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
        for ok in [
            "base.qcow2",
            "chain/base.qcow2",
            "a..b",
            ".hidden",
            "with space.img",
            "chain/.yolo-status",
            "déjà-vu.qcow2",
        ] {
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
            "gpj.\u{202E}img",
            "a\u{2066}b",
            " b.img ",
            "b.img ",
            "dir /b",
            "a\\b",
            ".yolo-status",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(4097)).is_err());
    }
}
