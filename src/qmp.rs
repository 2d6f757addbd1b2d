//! A minimal client of QEMU's machine protocol (QMP): one JSON object per
//! line over a Unix socket. Enough to run commands one at a time; events
//! that arrive meanwhile are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads QEMU's greeting and leaves capabilities negotiation.
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to QMP socket {}", socket.display()))?;
        // QEMU greets one client at a time: a second waits in silence.
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.next_message().with_context(|| {
            format!(
                "no greeting on {}: is another client connected? (QEMU serves one QMP client at a time)",
                socket.display()
            )
        })?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{} is not a QMP socket (greeting: {greeting})",
                socket.display()
            );
        }
        // A QEMU that stops answering must not hang the command for ever.
        qmp.writer.set_read_timeout(Some(Duration::from_secs(60)))?;
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value, or QEMU's error as
    /// the error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(&json!({ "execute": command, "arguments": arguments }))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let message = self.next_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let desc = error["desc"].as_str().unwrap_or("no description");
                bail!("QEMU refused {command}: {desc}");
            }
            // Anything else is an asynchronous event.
        }
    }

    fn next_message(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .context("reading from QMP")?
            == 0
        {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
    }
}
