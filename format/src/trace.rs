//! Read traces: one `OFFSET LENGTH` pair per line, in time order, decimal or
//! `0x` hex, `#` starting a comment. Turned into block ids in first-access
//! order, which is the order a boot image keeps.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::ops::Range;

use crate::yolo::block_count;
use crate::{FormatError, Result, TraceLineFault};

/// One read: `length` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub offset: u64,
    pub length: u64,
}

/// Parses a whole trace. Garbage is an error naming its line number.
pub fn parse_trace(input: impl BufRead) -> Result<Vec<Read>> {
    let mut reads = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|e| FormatError::Trace {
            line: line_no,
            fault: TraceLineFault::Read(e),
        })?;
        let parsed = parse_line(&line).map_err(|fault| FormatError::Trace {
            line: line_no,
            fault,
        })?;
        if let Some(read) = parsed {
            reads.push(read);
        }
    }
    Ok(reads)
}

fn parse_line(line: &str) -> std::result::Result<Option<Read>, TraceLineFault> {
    let content = line.split('#').next().unwrap_or("").trim();
    if content.is_empty() {
        return Ok(None);
    }
    let mut fields = content.split_whitespace();
    let (Some(offset), Some(length), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(TraceLineFault::Syntax(content.to_string()));
    };
    let offset = parse_number(offset).ok_or_else(|| TraceLineFault::Offset(offset.to_string()))?;
    let length = parse_number(length).ok_or_else(|| TraceLineFault::Length(length.to_string()))?;
    if offset.checked_add(length).is_none() {
        return Err(TraceLineFault::Overflow);
    }
    Ok(Some(Read { offset, length }))
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Writes `reads` as a trace `parse_trace` reads back, one `OFFSET LENGTH`
/// line each, after a `#` comment line.
pub fn write_trace(
    mut out: impl std::io::Write,
    comment: &str,
    reads: &[Read],
) -> std::io::Result<()> {
    writeln!(out, "# {comment}")?;
    for read in reads {
        writeln!(out, "{} {}", read.offset, read.length)?;
    }
    Ok(())
}

/// Most blocks a trace may turn into: 16 GiB of 4 KiB blocks. A boot reads
/// tens of megabytes; a trace beyond this is not a boot's, and would make
/// capture hold a whole disk in memory.
pub const MAX_TRACE_BLOCKS: u64 = 1 << 22;

/// Block ids touched by `reads`, each once, in the order first touched.
/// Reads that run past the end of the file are clipped (a read at EOF is
/// normal); a read that starts past it means the trace is for another file.
/// Work is proportional to the blocks returned, not to the bytes the reads
/// span: a trace that rereads a huge range costs nothing more.
pub fn blocks_in_access_order(reads: &[Read], file_size: u64, block_size: u32) -> Result<Vec<u64>> {
    let bs = u64::from(block_size);
    let n = block_count(file_size, block_size);
    let mut seen = SeenBlocks::default();
    let mut order = Vec::new();
    for (i, read) in reads.iter().enumerate() {
        if read.offset > file_size {
            return Err(FormatError::ReadPastEnd {
                read: i + 1,
                offset: read.offset,
                file_size,
            });
        }
        if read.length == 0 {
            continue;
        }
        let first = read.offset / bs;
        let end = (read.offset.saturating_add(read.length - 1) / bs + 1).min(n);
        if first >= end {
            continue;
        }
        for new in seen.insert(first..end) {
            if order.len() as u64 + (new.end - new.start) > MAX_TRACE_BLOCKS {
                return Err(FormatError::TraceTooLarge { read: i + 1 });
            }
            order.extend(new);
        }
    }
    Ok(order)
}

/// The block ranges seen so far, disjoint and not touching: start -> end.
#[derive(Default)]
struct SeenBlocks(BTreeMap<u64, u64>);

impl SeenBlocks {
    /// Marks `range` seen; returns its parts that were not, in order.
    fn insert(&mut self, range: Range<u64>) -> Vec<Range<u64>> {
        // Ranges that overlap or touch `range`: ends grow with starts, so
        // walking down from the last start <= range.end, stop at the first
        // that ends before range.start.
        let mut touching: Vec<(u64, u64)> = self
            .0
            .range(..=range.end)
            .rev()
            .take_while(|(_, &end)| end >= range.start)
            .map(|(&start, &end)| (start, end))
            .collect();
        touching.reverse();
        let mut new = Vec::new();
        let (mut at, mut merged) = (range.start, range.clone());
        for (start, end) in touching {
            if start > at {
                new.push(at..start);
            }
            at = at.max(end);
            merged = merged.start.min(start)..merged.end.max(end);
            self.0.remove(&start);
        }
        if at < range.end {
            new.push(at..range.end);
        }
        self.0.insert(merged.start, merged.end);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious version: every block of every read, through a set.
    fn naive(reads: &[Read], file_size: u64, bs: u32) -> Vec<u64> {
        let n = block_count(file_size, bs);
        let mut seen = std::collections::HashSet::new();
        let mut order = Vec::new();
        for r in reads.iter().filter(|r| r.length > 0) {
            let last = (r.offset + r.length - 1) / u64::from(bs);
            for id in r.offset / u64::from(bs)..=last {
                if id < n && seen.insert(id) {
                    order.push(id);
                }
            }
        }
        order
    }

    proptest! {
        #[test]
        fn ranges_give_what_every_block_would(
            reads in proptest::collection::vec((0u64..40_000, 0u64..9_000), 0..40)
        ) {
            let reads: Vec<Read> = reads
                .into_iter()
                .map(|(offset, length)| Read { offset, length })
                .collect();
            let got = blocks_in_access_order(&reads, 40_000, 512).unwrap();
            prop_assert_eq!(got, naive(&reads, 40_000, 512));
        }
    }

    #[test]
    fn a_trace_of_a_whole_disk_is_refused_quickly() {
        let huge = Read {
            offset: 0,
            length: u64::MAX,
        };
        let err = blocks_in_access_order(&[huge], 1 << 40, 512).unwrap_err();
        assert!(err.to_string().contains("not a whole disk"), "{err}");
        let again = vec![
            Read {
                offset: 0,
                length: 1 << 30
            };
            10_000
        ];
        assert_eq!(
            blocks_in_access_order(&again, 1 << 30, 4096).unwrap().len(),
            1 << 18
        );
    }

    #[test]
    fn written_traces_parse_back() {
        let reads = vec![
            Read {
                offset: 0,
                length: 4096,
            },
            Read {
                offset: 1 << 40,
                length: 7,
            },
        ];
        let mut text = Vec::new();
        write_trace(&mut text, "boot of base", &reads).unwrap();
        assert_eq!(parse_trace(&text[..]).unwrap(), reads);
    }

    #[test]
    fn parses_comments_hex_and_blank_lines() {
        let text = "# boot of base\n0 4096\n\n0x2000 512 # inode table\n  8192\t100\n";
        let reads = parse_trace(text.as_bytes()).unwrap();
        assert_eq!(
            reads,
            vec![
                Read {
                    offset: 0,
                    length: 4096
                },
                Read {
                    offset: 0x2000,
                    length: 512
                },
                Read {
                    offset: 8192,
                    length: 100
                },
            ]
        );
    }

    #[test]
    fn garbage_names_its_line() {
        for (text, line) in [
            ("0 1\nabc 4\n", 2),
            ("0\n", 1),
            ("1 2 3\n", 1),
            ("0 1\n0 -1\n", 2),
        ] {
            match parse_trace(text.as_bytes()) {
                Err(FormatError::Trace { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn blocks_keep_first_access_order() {
        let reads = [
            Read {
                offset: 8192,
                length: 4096,
            },
            Read {
                offset: 100,
                length: 5000,
            },
            Read {
                offset: 8192,
                length: 1,
            },
            Read {
                offset: 9990,
                length: 100,
            },
        ];
        assert_eq!(
            blocks_in_access_order(&reads, 10_000, 4096).unwrap(),
            vec![2, 0, 1]
        );
    }

    #[test]
    fn read_past_end_is_rejected_and_tail_is_clipped() {
        let past = [Read {
            offset: 20_000,
            length: 1,
        }];
        assert!(blocks_in_access_order(&past, 10_000, 4096).is_err());
        let tail = [Read {
            offset: 9000,
            length: 1 << 20,
        }];
        assert_eq!(
            blocks_in_access_order(&tail, 10_000, 4096).unwrap(),
            vec![2]
        );
    }
}
