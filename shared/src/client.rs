//! Channels to other souk services.
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// A lazily connecting channel to `url` (`http://host:port`): creating it never fails because the
/// peer is down, so a service can start before its dependencies; calls fail fast while it is.
///
/// # Errors
/// When `url` is not a valid URI.
pub fn lazy_channel(url: &str, connect_timeout: Duration) -> Result<Channel, Error> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Address(url, e.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}
