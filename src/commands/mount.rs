use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use yolo_store_core::{Follower, ImageServer, LearnOptions, RemoteTier, ServeOptions, Store};

use crate::commands::remote::RemoteArgs;
use crate::fuse::{check_mount_paths, serve_handed_over, supervise, MountOptions, Serve};
use crate::human;
use crate::metrics;

#[derive(clap::Args)]
pub struct Args {
    /// The directory holding the VMI files (backing files) to serve.
    #[arg(long, required_unless_present = "upgrade")]
    images: Option<PathBuf>,
    /// Where to mount: point a VM's qcow2 overlay at MOUNTPOINT/NAME.
    mountpoint: PathBuf,
    /// Bytes of decompressed chunks kept in memory, shared by every VMI
    /// (suffixes K, M, G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    cache_size: u64,
    /// Which boot images to load into the cache ahead of reads: each one on
    /// its file's first open (`open`), every one at mount time (`all`), or
    /// none.
    #[arg(long, value_enum, default_value_t = Preload::Open)]
    preload: Preload,
    /// Serve the counters for Prometheus at http://ADDR:PORT/metrics
    /// (an IP address, loopback unless --metrics-allow-remote).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Let --metrics listen on an address other hosts can reach: the
    /// metrics name every VMI served.
    #[arg(long, requires = "metrics")]
    metrics_allow_remote: bool,
    /// Hand files without a (matching) boot image to the kernel with FUSE
    /// passthrough (Linux >= 6.9, root): their reads never reach the
    /// daemon. After a server restart, an open that conflicts with one the
    /// first server passed through fails until that one closes
    /// (docs/design.md, FUSE passthrough).
    #[arg(long)]
    passthrough: bool,
    #[command(flatten)]
    learn: LearnArgs,
    #[command(flatten)]
    remote: RemoteMountArgs,
    #[command(flatten)]
    fuse: FuseArgs,
    /// Replace the server process of the running mount at MOUNTPOINT with
    /// the yolo-store binary now installed at its path, without unmounting
    /// (VMs see a pause, no error).
    #[arg(long, conflicts_with = "images")]
    upgrade: bool,
    /// Internal: serve the mount of the supervisor at the other end of this
    /// control socket (the supervisor starts servers with it).
    #[arg(long, hide = true, value_name = "FD")]
    serve_control: Option<i32>,
}

/// Boot images that make themselves (docs/design.md, Learning).
#[derive(clap::Args)]
struct LearnArgs {
    /// Record the first boot of every file without a usable boot image and
    /// import it into the store: the next open is served from the store.
    #[arg(long)]
    learn: bool,
    /// The longest a recording lasts, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300,
        requires = "learn"
    )]
    learn_window: u64,
    /// A recording ends once no read came for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, requires = "learn")]
    learn_quiet: u64,
    /// Recordings with fewer reads are probes, not boots: not learned.
    #[arg(long, value_name = "N", default_value_t = 64, requires = "learn")]
    learn_min_reads: usize,
}

/// A lazy remote tier (docs/design.md, The lazy remote tier).
#[derive(clap::Args)]
struct RemoteMountArgs {
    /// Serve the boot images this remote (s3://BUCKET[/PREFIX] or
    /// file:///DIR) holds and the store does not, fetching their chunks as
    /// they are read and storing each once complete; with --learn, push
    /// every learned boot image there too. Credentials as for push/pull.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// With --remote: the S3 endpoint.
    #[arg(long, requires = "remote")]
    endpoint: Option<String>,
    /// With --remote: the S3 region.
    #[arg(long, requires = "remote")]
    region: Option<String>,
    /// With --remote: the longest a read waits for the remote, in
    /// milliseconds, before it is served from the VMI file.
    #[arg(long, value_name = "MS", default_value_t = 2000, requires = "remote")]
    remote_timeout: u64,
    /// With --remote: GETs in flight at once.
    #[arg(long, default_value_t = 8, requires = "remote",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    remote_jobs: u16,
}

impl RemoteMountArgs {
    fn open(&self, what: &str) -> anyhow::Result<Option<yolo_store_core::Remote>> {
        let Some(url) = &self.remote else {
            return Ok(None);
        };
        let args = RemoteArgs {
            remote: url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            jobs: self.remote_jobs,
        };
        Ok(Some(args.open(what)?.0))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preload {
    Open,
    All,
    None,
}

/// Options every mount takes.
#[derive(clap::Args)]
pub struct FuseArgs {
    /// Let users other than the one who mounted use the mount.
    #[arg(long)]
    allow_other: bool,
    /// FUSE request loops: a read that waits on the disk holds only its own.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Kernel read-ahead for the mount, in KiB (the bdi default is 128).
    #[arg(long, default_value_t = 1024)]
    read_ahead_kb: u32,
}

impl FuseArgs {
    pub fn options(&self) -> MountOptions {
        MountOptions {
            allow_other: self.allow_other,
            threads: self.threads,
            read_ahead_kb: self.read_ahead_kb,
            passthrough: false,
        }
    }
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    if args.upgrade {
        return upgrade(&args.mountpoint);
    }
    let images = args.images.as_deref().context("--images is required")?;
    let Some(control) = args.serve_control else {
        // Everything that can be refused is, before the store is opened.
        check_mount_paths(images, &args.mountpoint)?;
        // The supervisor: it mounts, and this binary serves in a child
        // process that can die or be replaced without unmounting.
        let options = MountOptions {
            passthrough: args.passthrough,
            ..args.fuse.options()
        };
        supervise(&args.mountpoint, &options)?;
        return Ok(ExitCode::SUCCESS);
    };
    // A server: the supervisor checked the paths. Not again: a stat of the
    // mountpoint, once mounted, waits for a server, which is us.
    let images = yolo_store_core::images_dir(images)
        .with_context(|| format!("images directory {}", images.display()))?;
    let cache_bytes = usize::try_from(args.cache_size).context("--cache-size is too large")?;
    let metrics = args
        .metrics
        .map(|addr| metrics::bind(addr, args.metrics_allow_remote))
        .transpose()?;
    let tier = args.remote.open("fetch")?;
    if let Some(remote) = &tier {
        if !path.join("CURRENT").exists() {
            // An empty node: a store that chunks the way the remote does.
            let config = remote
                .config()
                .with_context(|| format!("reading {} to create the store", remote.url()))?
                .ok_or_else(|| anyhow::anyhow!("{}: nothing was ever pushed here", remote.url()))?;
            Store::open_or_create(path, Some(config.store_config()))
                .with_context(|| format!("creating store {}", path.display()))?;
        }
    }
    let store =
        Follower::open(path).with_context(|| format!("opening store {}", path.display()))?;
    let remote_tier = tier.is_some();
    let options = ServeOptions {
        cache_bytes,
        preload: match args.preload {
            Preload::Open => yolo_store_core::Preload::OnOpen,
            Preload::All => yolo_store_core::Preload::All,
            Preload::None => yolo_store_core::Preload::Never,
        },
        passthrough: args.passthrough,
        remote: tier.map(|remote| {
            RemoteTier::new(remote, Duration::from_millis(args.remote.remote_timeout))
        }),
    };
    let server = ImageServer::new(store, &images, options)
        .with_context(|| format!("images directory {}", images.display()))?;
    let server = if args.learn.learn {
        let options = LearnOptions {
            window: Duration::from_secs(args.learn.learn_window),
            quiet: Duration::from_secs(args.learn.learn_quiet),
            min_reads: args.learn.learn_min_reads,
            ..LearnOptions::default()
        };
        let remote = args.remote.open("push")?;
        server.learn(options, remote).context("starting to learn")?
    } else {
        Arc::new(server)
    };
    let backend = Arc::new(Serve::new(server.clone()));
    let files = server.verify_all_in_background()?;
    if remote_tier {
        server.start_remote().context("starting the remote tier")?;
    }
    eprintln!(
        "yolo-store: checking the identity of {files} VMI file(s) with a boot image in the background{}",
        if args.preload == Preload::All { ", then preloading them" } else { "" }
    );
    if let Some(listener) = metrics {
        let addr = listener.local_addr().context("metrics endpoint")?;
        let server = server.clone();
        metrics::serve(listener, move |format| {
            metrics::encode(server.stats(), format)
        })
        .context("starting the metrics thread")?;
        eprintln!("yolo-store: metrics at http://{addr}/metrics");
    }
    let root = server.images_dir().to_path_buf();
    serve_handed_over(backend, root, control, &args.fuse.options())?;
    let stats = server.stats();
    eprintln!(
        "yolo-store: unmounted; {} reads, {} from the store, {} from files, cache {} hits / {} misses, {} chunk failures, {} passthrough opens",
        stats.reads,
        human::bytes(stats.bytes_from_store),
        human::bytes(stats.bytes_from_file),
        stats.cache.hits,
        stats.cache.misses,
        stats.chunk_failures,
        stats.passthrough_opens,
    );
    Ok(ExitCode::SUCCESS)
}

/// `mount --upgrade`: asks the supervisor of the mount at `mountpoint`
/// (named in its status file) to start the binary now at its path and hand
/// the mount over, and waits until a new server answers.
fn upgrade(mountpoint: &Path) -> anyhow::Result<ExitCode> {
    let before = super::status::read_status(mountpoint)?;
    let field = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_u64);
    let (Some(supervisor), Some(upgrades)) = (
        field(&before, "supervisor_pid"),
        field(&before, "server_upgrades"),
    ) else {
        anyhow::bail!(
            "{} is not served under a supervisor (no supervisor_pid in its status)",
            mountpoint.display()
        );
    };
    let pid = libc::pid_t::try_from(supervisor).context("supervisor_pid")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling the supervisor (pid {pid})"));
    }
    // The new server opens the store before it takes over; a minute is far
    // more than that takes, and the supervisor logs why it gave up.
    for _ in 0..600 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = super::status::read_status(mountpoint)?;
        if field(&now, "server_upgrades").is_some_and(|n| n > upgrades) {
            println!(
                "upgraded: server pid {} (was {})",
                field(&now, "server_pid").unwrap_or(0),
                field(&before, "server_pid").unwrap_or(0)
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    anyhow::bail!(
        "no new server took over within a minute; the old one still serves (see the mount's log)"
    )
}
