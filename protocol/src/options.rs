//! The broker options both `warren-host` and `warren` take, written once so
//! that their names, environment variables, defaults and help cannot drift
//! apart. Each binary adds the options only it has (a host's
//! `--connect-timeout`, a caller's `--timeout`).

use std::path::PathBuf;

use crate::{DEFAULT_AMQP_URL, DEFAULT_QUEUE, values};

/// Which broker, which queue, and which mode.
///
/// The options are global: the client's subcommands take them before or
/// after the command, and a host (which has no subcommands) is unaffected.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker to connect to, like amqp://user:password@host:5672/vhost.
    /// Give it more than once (or comma-separated in AMQP_URL) for the nodes
    /// of a cluster: the first that answers is used, and the next when it is
    /// lost. Passwords are never logged.
    // Checked when connecting, not by clap: clap would echo the password.
    #[arg(long = "amqp-url", global = true, env = "AMQP_URL", value_name = "URL",
          value_delimiter = ',', default_value = DEFAULT_AMQP_URL)]
    pub amqp_urls: Vec<String>,

    /// PEM file of CA certificates to trust for amqps:// brokers, besides the
    /// system's (a broker whose certificate a private CA issued).
    #[arg(long, global = true, env = "AMQP_CA_FILE", value_name = "FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// The request queue: callers send to it, hosts consume it, declaring
    /// it as a classic durable queue (one the tutorial's server declared,
    /// not durable, is joined as it is) or, with --durable, as a quorum
    /// queue.
    #[arg(long, global = true, default_value = DEFAULT_QUEUE, value_parser = values::queue_name)]
    pub queue: String,

    /// Durable mode, which every host and caller of a queue should agree on
    /// (a host warns when a caller does not): the queue is a durable quorum
    /// queue (replicated over a cluster; requests survive broker restarts
    /// and node loss), requests and replies are persistent, a host acks a
    /// request only once the broker has confirmed its reply, and a caller's
    /// replies come through a durable callback queue that survives its
    /// reconnecting (a broker restart loses no call in flight).
    #[arg(long, global = true)]
    pub durable: bool,
}
