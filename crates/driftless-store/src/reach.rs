//! Refusing an unreachable server fast. A database pool retries refused connections until
//! its acquire timeout and then says only "pool timed out"; one plain TCP connect first
//! names the host, the port and the operating system's error at once.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long the first TCP connect to a server may take.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that `host:port` accepts a TCP connection, within [`REACH_TIMEOUT`]. A host that
/// is a Unix socket directory (starts with `/`) is not checked here. The error names the
/// host, the port and the cause, and nothing else of the URL.
pub async fn reachable(host: &str, port: u16) -> Result<(), String> {
    if host.starts_with('/') {
        return Ok(());
    }
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(REACH_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {target}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to {target}: no answer within {} s",
            REACH_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_named_with_the_os_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(reachable("127.0.0.1", port).await, Ok(()));
        drop(listener);
        let err = reachable("127.0.0.1", port).await.unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("refused"), "{err}");
    }
}
