//! What `push`, `pull` and `gc --remote` share: how to reach the remote and
//! a progress bar for the bytes moved.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use yolo_store_core::{Remote, RemoteOptions};

#[derive(clap::Args)]
pub struct RemoteArgs {
    /// The remote: s3://BUCKET[/PREFIX] (credentials from AWS_ACCESS_KEY_ID
    /// and AWS_SECRET_ACCESS_KEY, never printed) or file:///DIRECTORY.
    #[arg(long, env = "YOLO_REMOTE")]
    pub remote: String,
    /// S3 endpoint, e.g. http://127.0.0.1:7480 for a radosgw (default:
    /// AWS_ENDPOINT, else AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3 region (default: AWS_DEFAULT_REGION or AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: u16,
}

impl RemoteArgs {
    /// Opens the remote, with a progress bar on a terminal (hidden otherwise).
    pub fn open(&self, what: &str) -> anyhow::Result<(Remote, ProgressBar)> {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let shown = bar.clone();
        let options = RemoteOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            concurrency: usize::from(self.jobs),
            progress: Some(Arc::new(move |done, total| {
                shown.set_length(total);
                shown.set_position(done);
            })),
        };
        Ok((Remote::open(&self.remote, options)?, bar))
    }
}
