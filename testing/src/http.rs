//! A small real HTTP server for the tests of outbound HTTP: procedures call
//! it over TCP as they would call an API, with nothing mocked in between.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// What the server answers: a status, headers and a body.
pub type HttpAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// Starts a one-request-per-connection HTTP server on 127.0.0.1 and returns
/// its port. `answer` gets each request's path and `hint` (say, another
/// server's port to redirect to) and says what to send back. It serves
/// until the test's runtime ends.
pub async fn serve_http(answer: fn(&str, u16) -> HttpAnswer, hint: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, headers, body) = answer(&path, hint);
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    port
}
