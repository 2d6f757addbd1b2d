//! A small HTTP/1.x responder for `GET /metrics`, on std threads. Each
//! connection gets one request and one response, then is closed. Whatever
//! a client does, it costs at most one of [`MAX_CONNECTIONS`] threads for
//! at most [`DEADLINE`], and never touches the FUSE threads: a scrape only
//! takes a snapshot of the counters.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::encode::Format;

/// Connections handled at once; one more is answered 503 at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The whole exchange (request in, response out) of one connection.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// A request's line and headers; a scrape's are a few hundred bytes.
const MAX_REQUEST: usize = 8 << 10;

/// Binds `addr`. Addresses other than loopback are refused unless
/// `allow_remote`: the metrics name every VMI served.
pub fn bind(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "--metrics {addr} is not a loopback address; the metrics name the VMIs served, \
             so add --metrics-allow-remote to expose them beyond this host"
        );
    }
    TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("metrics endpoint {addr}: {e}"))
}

/// Answers scrapes on `listener` with the body `scrape` makes, in a thread
/// of its own, for the life of the process.
pub fn serve<F>(listener: TcpListener, scrape: F) -> io::Result<()>
where
    F: Fn(Format) -> Result<String, std::fmt::Error> + Send + Sync + 'static,
{
    let scrape = Arc::new(scrape);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("yolo-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                // A failed accept (a client that reset first, no fds left)
                // concerns that client only; the pause keeps one that
                // fails again at once (EMFILE) from spinning a core.
                let Ok(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    busy(stream);
                    continue;
                }
                let (scrape, slot) = (scrape.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("yolo-metrics-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, Instant::now() + DEADLINE, &*scrape);
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    // The closure, and so the stream, was dropped with it.
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(())
}

/// Too many connections: say so without waiting for the request. What of
/// it has arrived is read (without waiting), so closing does not reset the
/// connection and lose the answer.
fn busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = respond(
        &mut stream,
        "503 Service Unavailable",
        &[("Retry-After", "1")],
        "too many connections\n",
        false,
    );
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

fn handle<F>(mut stream: TcpStream, deadline: Instant, scrape: &F) -> io::Result<()>
where
    F: Fn(Format) -> Result<String, std::fmt::Error>,
{
    let left = || deadline.saturating_duration_since(Instant::now());
    let request = match read_head(&mut stream, &left) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(()), // closed before a whole request
        Err(Head::TooLarge) => {
            return finish(
                &mut stream,
                "431 Request Header Fields Too Large",
                &[],
                "",
                &left,
            )
        }
        Err(Head::TimedOut) => return finish(&mut stream, "408 Request Timeout", &[], "", &left),
        Err(Head::Io(e)) => return Err(e),
    };
    let Some((method, path, accept)) = parse(&request) else {
        return finish(&mut stream, "400 Bad Request", &[], "bad request\n", &left);
    };
    if path != "/metrics" {
        return finish(
            &mut stream,
            "404 Not Found",
            &[],
            "only /metrics is here\n",
            &left,
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return finish(
                &mut stream,
                "405 Method Not Allowed",
                &[("Allow", "GET, HEAD")],
                "only GET and HEAD\n",
                &left,
            )
        }
    };
    let format = Format::negotiate(accept);
    match scrape(format) {
        Ok(body) => {
            stream.set_write_timeout(Some(left().max(Duration::from_millis(1))))?;
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", format.content_type())],
                &body,
                head_only,
            )?;
            let _ = stream.shutdown(Shutdown::Write);
            Ok(())
        }
        Err(_) => finish(&mut stream, "500 Internal Server Error", &[], "", &left),
    }
}

enum Head {
    TooLarge,
    TimedOut,
    Io(io::Error),
}

/// Reads up to the blank line that ends the headers. `Ok(None)`: the client
/// closed first.
fn read_head(stream: &mut TcpStream, left: &dyn Fn() -> Duration) -> Result<Option<String>, Head> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let wait = left();
        if wait.is_zero() {
            return Err(Head::TimedOut);
        }
        stream.set_read_timeout(Some(wait)).map_err(Head::Io)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Head::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Head::Io(e)),
        };
        // Look for the end only where it can be: across the new bytes.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_REQUEST {
            return Err(Head::TooLarge);
        }
    }
}

/// (method, path without the query, Accept header), or None if this is no
/// HTTP/1.x request.
fn parse(head: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    let mut accept = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.trim());
        }
    }
    Some((method, path, accept))
}

/// Answers an error and closes, reading what the client may still send
/// (a body we did not want) so the close does not reset the connection
/// before the client has read the answer.
fn finish(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
    left: &dyn Fn() -> Duration,
) -> io::Result<()> {
    stream.set_write_timeout(Some(left().max(Duration::from_millis(1))))?;
    respond(stream, status, headers, body, false)?;
    stream.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 1 << 20 {
        let wait = left().min(Duration::from_millis(200));
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(name, _)| *name == "Content-Type") {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_scrape_and_refuses_what_is_not_http() {
        let head = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: text/plain";
        assert_eq!(parse(head), Some(("GET", "/metrics", Some("text/plain"))));
        assert_eq!(
            parse("GET /metrics HTTP/1.0"),
            Some(("GET", "/metrics", None))
        );
        assert_eq!(parse("GET /metrics"), None);
        assert_eq!(parse("GET /metrics SMTP/1.0"), None);
        assert_eq!(parse("GET  /metrics HTTP/1.1"), None);
        assert_eq!(parse("GET /metrics HTTP/1.1\r\nno colon"), None);
        assert_eq!(parse("\u{0}\u{1}"), None);
    }

    #[test]
    fn loopback_only_unless_allowed() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let err = bind(any, false).unwrap_err().to_string();
        assert!(err.contains("--metrics-allow-remote"), "{err}");
        assert!(bind(any, true).is_ok());
        assert!(bind("127.0.0.1:0".parse().unwrap(), false).is_ok());
    }
}
