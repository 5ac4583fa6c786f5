//! The sandbox alone, no broker: what one request costs Warren between
//! "body received" and "reply ready" (a fresh instance, WASI with nothing
//! granted, the call, the limits), for `fib(1)` where compute is nil; and
//! `fib(30)` in Wasm under the deadline and memory limit against the same
//! Rust compiled natively, which is what the sandbox costs real work.
//!
//! Then the same fresh instance + call of `fib(1)` for each guest language
//! (Rust, Python with componentize-py, JavaScript with componentize-js):
//! what a procedure's language costs per request. The Python and JavaScript
//! components are skipped, with a line saying so, when `just build-guests`
//! has not built them.
//!
//! Spares are off for all of these (a fresh instance started on demand is
//! what every request pays under load), except in
//! `fresh_instance_fib_1/*_spare_ready`, which measures what a request pays
//! when the host had time to start its instance ahead (`--spare-instances`).
//!
//! Last, `fib_25/*`: the seed's recursion doing real work in each language,
//! beside `fib_25/native_cpython`, the seed's own `fib` in this machine's
//! CPython (`$WARREN_PYTHON`, else `python3`): issue 10's ratio for Python
//! without the broker's round trip in it.
//!
//! `outbound_http/*` (a separate group): one GET to a local HTTP server
//! from inside the sandbox (`test-guests/fetcher`, granted that server by a
//! manifest: the address check, the connection to the checked address, the
//! call and byte caps) against the same GET made natively over a fresh
//! connection, and the same component's request without a GET, so the
//! difference is what the call itself costs.
//!
//! Run with `just bench` (needs `just build-guests` and
//! `just build-test-guests`).

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use warren_host::sandbox::{EngineOptions, Limits, Sandbox};
use warren_protocol::digest;

fn sandbox(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/guest_fib.wasm");
    let wasm = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `just build-guest` first", path.display()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let no_spares = EngineOptions {
        spare_instances: 0,
        ..EngineOptions::default()
    };
    let sandbox = Sandbox::with_options(Limits::default(), None, no_spares).unwrap();
    let with_spares = Sandbox::new(Limits::default(), None).unwrap();
    let component = sandbox.prepare(&wasm, &digest(&wasm)).unwrap();

    c.bench_function("sandbox_fresh_instance_fib_1", |b| {
        fresh_instance_fib_1(b, &runtime, &sandbox, &component)
    });
    let mut work = c.benchmark_group("fib_30");
    work.sample_size(20);
    work.bench_function("wasm_with_deadline_and_memory_limit", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = sandbox
                .run(&component, b"30".to_vec(), "bench")
                .await
                .unwrap();
            assert_eq!(reply, b"832040");
        })
    });
    work.bench_function("native", |b| {
        b.iter(|| {
            let reply = guest_fib::reply(std::hint::black_box(b"30")).unwrap();
            assert_eq!(reply, b"832040");
        })
    });
    work.finish();

    // Per language, fib(1): instance + call is all there is to it. fib(1)
    // rather than an echo so every language runs the same parse and reply;
    // the Rust figure is sandbox_fresh_instance_fib_1 above.
    let mut languages = c.benchmark_group("fresh_instance_fib_1");
    let mut prepared = vec![("rust", component.clone())];
    for (language, file) in [("python", "fib-py.wasm"), ("javascript", "fib-js.wasm")] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/guests")
            .join(file);
        let Ok(wasm) = std::fs::read(&path) else {
            eprintln!(
                "skipping {language}: {} is missing; run `just build-guests`",
                path.display()
            );
            continue;
        };
        let component = sandbox.prepare(&wasm, &digest(&wasm)).unwrap();
        languages.bench_function(language, |b| {
            fresh_instance_fib_1(b, &runtime, &sandbox, &component)
        });
        prepared.push((language, component));
        let component = with_spares.prepare(&wasm, &digest(&wasm)).unwrap();
        languages.bench_function(format!("{language}_spare_ready"), |b| {
            spare_ready_fib_1(b, &runtime, &with_spares, &component)
        });
    }
    languages.finish();

    // fib(25) per language: the interpreter inside Wasm against the seed's
    // own fib in this machine's CPython (issue 10's ratio, without the broker).
    let mut work = c.benchmark_group("fib_25");
    work.sample_size(20);
    for (language, component) in &prepared {
        work.bench_function(*language, |b| {
            b.to_async(&runtime).iter(|| async {
                let reply = sandbox
                    .run(component, b"25".to_vec(), "bench")
                    .await
                    .unwrap();
                assert_eq!(reply, b"75025");
            })
        });
    }
    match NativePython::start() {
        Ok(mut python) => {
            work.bench_function("native_cpython", |b| {
                b.iter(|| assert_eq!(python.fib(25), "75025"))
            });
        }
        Err(why) => eprintln!("skipping fib_25/native_cpython: {why}"),
    }
    work.finish();

    let mut compile = c.benchmark_group("sandbox_compile");
    compile.sample_size(10);
    compile.bench_function("fib_component_uncached", |b| {
        b.iter(|| sandbox.prepare(&wasm, "sha256:no-cache").unwrap())
    });
    compile.finish();
}

/// A fresh instance of `component` and a call of fib(1): the per-request
/// cost of a procedure.
fn fresh_instance_fib_1(
    b: &mut criterion::Bencher<'_>,
    runtime: &tokio::runtime::Runtime,
    sandbox: &Sandbox,
    component: &warren_host::sandbox::PreparedComponent,
) {
    b.to_async(runtime).iter(|| async {
        let reply = sandbox
            .run(component, b"1".to_vec(), "bench")
            .await
            .unwrap();
        assert_eq!(reply, b"1");
    })
}

/// fib(1) when the host had time to start the instance ahead: only the time
/// of each call is counted, and each waits until the spare the previous one
/// left behind has surely started.
fn spare_ready_fib_1(
    b: &mut criterion::Bencher<'_>,
    runtime: &tokio::runtime::Runtime,
    sandbox: &Sandbox,
    component: &warren_host::sandbox::PreparedComponent,
) {
    let call = || async {
        let reply = sandbox
            .run(component, b"1".to_vec(), "bench")
            .await
            .unwrap();
        assert_eq!(reply, b"1");
    };
    b.to_async(runtime).iter_custom(|iters| async move {
        let mut timed = std::time::Duration::ZERO;
        for _ in 0..iters {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let started = std::time::Instant::now();
            call().await;
            timed += started.elapsed();
        }
        timed
    })
}

/// The seed's `fib` run by this machine's CPython (`$WARREN_PYTHON`, else
/// `python3`) in a child that answers one line per number it reads: a pipe
/// round trip (tens of µs) on top of the computation. The function is the
/// one `guest-fib-py/app.py` compiles to Wasm (the seed's, word for word),
/// taken from that file so the two cannot drift apart.
struct NativePython {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl NativePython {
    const PROGRAM: &str = "import ast, sys
source = open(sys.argv[1]).read()
fib = next(f for f in ast.parse(source).body if getattr(f, 'name', '') == 'fib')
exec(compile(ast.Module([fib], []), sys.argv[1], 'exec'))
for line in sys.stdin:
    print(fib(int(line)), flush=True)
";

    fn start() -> std::io::Result<Self> {
        let python = std::env::var("WARREN_PYTHON").unwrap_or_else(|_| "python3".into());
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-fib-py/app.py");
        let mut child = std::process::Command::new(&python)
            .args(["-c", Self::PROGRAM])
            .arg(&app)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {python}: {e}")))?;
        let input = child.stdin.take().expect("piped stdin");
        let output = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self {
            child,
            input,
            output,
        })
    }

    fn fib(&mut self, n: u32) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{n}").expect("write to python3");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read from python3");
        line.trim_end().to_owned()
    }
}

impl Drop for NativePython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET from inside the sandbox against the same GET made natively.
fn outbound_http(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use warren_host::sandbox::Grants;
    use warren_protocol::manifest::Manifest;

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/guest_fetcher.wasm");
    let Ok(wasm) = std::fs::read(&path) else {
        eprintln!(
            "skipping outbound_http: {} is missing; run `just build-test-guests`",
            path.display()
        );
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = runtime.block_on(warren_testing::serve_http(
        |_, _| (200, vec![], b"hello".to_vec()),
        0,
    ));
    let no_spares = EngineOptions {
        spare_instances: 0,
        ..EngineOptions::default()
    };
    let sandbox = Sandbox::with_options(Limits::default(), None, no_spares).unwrap();
    let manifest = Manifest::parse(&format!(
        "[http]\nallow = [\"http://127.0.0.1:{port}\"]\ncalls = 1000000\n"
    ))
    .unwrap();
    let grants = Grants::resolve(sandbox.limits(), &manifest, "sha256:bench", None).unwrap();
    let component = sandbox
        .prepare_granted(&wasm, &digest(&wasm), grants)
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");

    let mut group = c.benchmark_group("outbound_http");
    group.bench_function("sandboxed_get", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = sandbox
                .run(&component, format!("get {url}").into_bytes(), "bench")
                .await
                .unwrap();
            assert_eq!(reply, b"200 hello");
        })
    });
    group.bench_function("sandboxed_no_get", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = sandbox
                .run(&component, format!("get-n 0 {url}").into_bytes(), "bench")
                .await
                .unwrap();
            assert_eq!(reply, b"0");
        })
    });
    group.bench_function("native_get", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream
                .write_all(format!("GET / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            assert!(response.ends_with(b"hello"));
        })
    });
    group.finish();
}

criterion_group!(benches, sandbox, outbound_http);
criterion_main!(benches);
