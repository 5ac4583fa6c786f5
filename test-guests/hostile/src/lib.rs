//! A hostile procedure for the sandbox tests: the request body names the
//! misbehaviour, and the component tries it against the host.
//!
//! | body | what it tries | what the host must answer |
//! |---|---|---|
//! | `spin` | loop forever in wasm code | `timeout` |
//! | `sleep` | block in a WASI sleep (a host call) | `timeout` |
//! | `memory-bomb` | allocate until memory runs out | `memory-limit` |
//! | `deep-recursion` | recurse until the stack overflows | `trap` |
//! | `panic` | `panic!` | `trap` with the panic message |
//! | `unreachable` | execute `unreachable` | `trap` |
//! | `read-file` | read `/etc/passwd` and `.` | `procedure-error` (the reads fail) |
//! | `read-env` | count environment variables and arguments | `ok`, `env=0 args=0` |
//! | `open-socket` | connect to the broker's port | `procedure-error` (the connect fails) |
//! | `lookup` | resolve `localhost` | `procedure-error` (the lookup fails) |
//! | `huge-reply` | return 5 MB | `reply-too-large` |
//! | `print-flood` | print forever | `timeout` |
//! | `empty-write-flood` | write empty buffers to stdout and stderr forever (wasmtime-wasi advisory GHSA-5m8g-xhq4-4h93) | `timeout`, the host's memory flat |
//! | `counter` | increment a global and return it | `ok`, always `1` |
//! | `say-hello` | print a line to stdout and one to stderr | `ok`; both lines in the host log |
//! | anything else | echo it | `ok` |

#[cfg(target_arch = "wasm32")]
mod component {
    use std::sync::atomic::{AtomicU64, Ordering};

    wit_bindgen::generate!({
        path: "../../wit",
        world: "procedure",
    });

    static COUNTER: AtomicU64 = AtomicU64::new(0);

    struct Hostile;

    impl exports::warren::procedure::handler::Guest for Hostile {
        fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
            match request.as_slice() {
                b"spin" => loop {
                    std::hint::black_box(COUNTER.load(Ordering::Relaxed));
                },
                b"sleep" => {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                    Ok(b"woke up".to_vec())
                }
                b"memory-bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                b"deep-recursion" => Ok(recurse(0).to_string().into_bytes()),
                b"panic" => panic!("hostile guest panicked on purpose"),
                b"unreachable" => core::arch::wasm32::unreachable(),
                b"read-file" => {
                    let file = std::fs::read("/etc/passwd").map(|b| b.len());
                    let dir = std::fs::read_dir(".").map(|d| d.count());
                    match (file, dir) {
                        (Err(f), Err(d)) => Err(format!("read failed: /etc/passwd: {f}; .: {d}")),
                        (f, d) => Ok(format!("escaped the sandbox: {f:?} {d:?}").into_bytes()),
                    }
                }
                b"read-env" => Ok(format!(
                    "env={} args={}",
                    std::env::vars_os().count(),
                    std::env::args_os().count()
                )
                .into_bytes()),
                b"open-socket" => match std::net::TcpStream::connect("127.0.0.1:5672") {
                    Err(e) => Err(format!("connect failed: {e}")),
                    Ok(_) => Ok(b"escaped the sandbox: connected".to_vec()),
                },
                b"lookup" => {
                    use std::net::ToSocketAddrs as _;
                    match "localhost:80".to_socket_addrs() {
                        Err(e) => Err(format!("lookup failed: {e}")),
                        Ok(addrs) => Ok(format!(
                            "escaped the sandbox: {:?}",
                            addrs.collect::<Vec<_>>()
                        )
                        .into_bytes()),
                    }
                }
                b"huge-reply" => Ok(vec![b'x'; 5 << 20]),
                b"print-flood" => loop {
                    println!("flooding the host's log, line after line after line");
                    eprintln!("and its stderr too");
                },
                b"empty-write-flood" => {
                    // Straight to WASI: std skips empty writes.
                    let stdout = wasip2::cli::stdout::get_stdout();
                    let stderr = wasip2::cli::stderr::get_stderr();
                    loop {
                        let _ = stdout.write(&[]);
                        let _ = stderr.write(&[]);
                    }
                }
                b"say-hello" => {
                    println!("hello from the guest's stdout");
                    eprintln!("hello from the guest's stderr");
                    Ok(b"said hello".to_vec())
                }
                b"counter" => Ok((COUNTER.fetch_add(1, Ordering::SeqCst) + 1)
                    .to_string()
                    .into_bytes()),
                other => Ok(other.to_vec()),
            }
        }
    }

    #[inline(never)]
    fn recurse(depth: u64) -> u64 {
        let frame = std::hint::black_box([depth; 64]);
        if depth == u64::MAX {
            0
        } else {
            recurse(depth + 1) + frame[3]
        }
    }

    export!(Hostile);
}
