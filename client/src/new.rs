//! `warren new`: a ready-to-build procedure project from the templates in
//! `client/templates/`.
//!
//! The project stands alone: it carries its own copy of `wit/procedure.wit`
//! and pins the same toolchain versions Warren's own guests are built and
//! tested with (wit-bindgen from the workspace, componentize-py from
//! `guest-fib-py/requirements.txt`, componentize-js from
//! `guest-fib-js/package.json` and its lockfile), so what builds here builds
//! there. Each template is an echo handler, its build command and a README.
//!
//! With `--grants` the project also shows what a manifest grants
//! (`client/templates/grants/`): a `NAME.toml` with `[config]` and
//! `[http]`, a handler that reads a configuration value and makes an
//! allowed HTTP call, and a WIT world that imports `wasi:config/store`
//! (and, for Python, whose bindings come only from WIT, `wasi:http`). Without it a new procedure asks for nothing, as
//! a procedure should until it needs something.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The language of a new procedure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../../wit/procedure.wit");

const RUST_CARGO_TOML: &str = include_str!("../templates/rust/Cargo.toml");
/// The versions Warren's own guests build with (`wit-bindgen` and what it
/// needs, as in the workspace's lock file).
const RUST_CARGO_LOCK: &str = include_str!("../templates/rust/Cargo.lock");
const RUST_BUILD: &str = include_str!("../templates/rust/build.rs");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
const RUST_README: &str = include_str!("../templates/rust/README.md");

const PYTHON_APP: &str = include_str!("../templates/python/app.py");
const PYTHON_BUILD: &str = include_str!("../templates/python/build.sh");
const PYTHON_README: &str = include_str!("../templates/python/README.md");
const PYTHON_REQUIREMENTS: &str = include_str!("../../guest-fib-py/requirements.txt");

const JS_APP: &str = include_str!("../templates/js/app.js");
const JS_ENTRY: &str = include_str!("../templates/js/entry.js");
const JS_README: &str = include_str!("../templates/js/README.md");
const JS_PACKAGE: &str = include_str!("../../guest-fib-js/package.json");
const JS_LOCK: &str = include_str!("../../guest-fib-js/package-lock.json");

const GRANTS_MANIFEST: &str = include_str!("../templates/grants/manifest.toml");
const GRANTS_WORLD: &str = include_str!("../templates/grants/world.wit");
const GRANTS_README: &str = include_str!("../templates/grants/README.md");
const GRANTS_README_END: &str = include_str!("../templates/grants/README-end.md");
const GRANTS_RUST_LIB: &str = include_str!("../templates/grants/lib.rs");
/// The Rust project's lock with `wasip2` (outbound HTTP) added, at the
/// version Warren's own test guests use.
const GRANTS_RUST_LOCK: &str = include_str!("../templates/grants/Cargo.lock");
const GRANTS_PYTHON_APP: &str = include_str!("../templates/grants/app.py");
const GRANTS_JS_APP: &str = include_str!("../templates/grants/app.js");
/// wasi:http 0.2.12 and the WASI packages it names, as the host links them
/// (copied from wasmtime-wasi-http 48's `wit/deps`): Python's toolchain
/// makes bindings only from the WIT it is given, so its world imports
/// `wasi:http/outgoing-handler` from these.
const WASI_HTTP_WIT: [(&str, &str); 7] = [
    (
        "wit/deps/cli.wit",
        include_str!("../templates/grants/wasi-http/cli.wit"),
    ),
    (
        "wit/deps/clocks.wit",
        include_str!("../templates/grants/wasi-http/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../templates/grants/wasi-http/filesystem.wit"),
    ),
    (
        "wit/deps/http.wit",
        include_str!("../templates/grants/wasi-http/http.wit"),
    ),
    (
        "wit/deps/io.wit",
        include_str!("../templates/grants/wasi-http/io.wit"),
    ),
    (
        "wit/deps/random.wit",
        include_str!("../templates/grants/wasi-http/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../templates/grants/wasi-http/sockets.wit"),
    ),
];
/// wasi:config, as the host links it (wasmtime-wasi-config).
const CONFIG_STORE_WIT: &str =
    include_str!("../../test-guests/configured/wit/deps/config/store.wit");
const CONFIG_WORLD_WIT: &str =
    include_str!("../../test-guests/configured/wit/deps/config/world.wit");

/// One file of a new project: its path inside the project, its text, and
/// whether it is executable.
struct File {
    path: String,
    text: String,
    executable: bool,
}

/// What `warren new` made, for the message that follows.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    /// The command that builds it, run in `dir`.
    pub build: &'static str,
    /// Where the build leaves the component, relative to `dir`.
    pub component: String,
}

/// Writes a new procedure project `name` in `lang` into `dir`, which must
/// not exist or be empty; with `grants`, the variant that uses a manifest.
/// `name` is a valid procedure name (the caller checked it).
pub fn create(name: &str, lang: Lang, grants: bool, dir: &Path) -> anyhow::Result<Created> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty; pick another directory (warren new NAME --lang LANG DIR)",
                dir.display()
            );
        }
    }
    let (mut files, build, component) = project(name, lang)?;
    if grants {
        with_grants(&mut files, name, lang, &component);
    }
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, file.text).with_context(|| format!("writing {}", path.display()))?;
        if file.executable {
            make_executable(&path)?;
        }
    }
    Ok(Created {
        dir: dir.to_owned(),
        build,
        component,
    })
}

/// The files of the project, its build command and where that leaves the
/// component.
fn project(name: &str, lang: Lang) -> anyhow::Result<(Vec<File>, &'static str, String)> {
    if lang == Lang::Rust && name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!(
            "{name:?} starts with a digit, which a Rust package name cannot; \
             pick a name that starts with a letter"
        );
    }
    let component = match lang {
        // Cargo names the library after the package, with '-' as '_'.
        Lang::Rust => format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        Lang::Python | Lang::Js => format!("{name}.wasm"),
    };
    let file = |path: &str, template: &str| File {
        path: path.to_owned(),
        text: fill(template, name, &component),
        executable: false,
    };
    let wit = file("wit/procedure.wit", WIT);
    let (files, build) = match lang {
        Lang::Rust => (
            vec![
                file("Cargo.toml", RUST_CARGO_TOML),
                file("Cargo.lock", RUST_CARGO_LOCK),
                file("build.rs", RUST_BUILD),
                file("src/lib.rs", RUST_LIB),
                file("README.md", RUST_README),
                file(".gitignore", "/target\n"),
                wit,
            ],
            "cargo build --release --target wasm32-wasip2",
        ),
        Lang::Python => (
            vec![
                file("app.py", PYTHON_APP),
                File {
                    executable: true,
                    ..file("build.sh", PYTHON_BUILD)
                },
                file("requirements.txt", &requirements()),
                file("README.md", PYTHON_README),
                file(".gitignore", "/.venv\n__pycache__/\n*.wasm\n"),
                wit,
            ],
            "./build.sh",
        ),
        Lang::Js => {
            let (package, lock) = js_package(name, &component)?;
            (
                vec![
                    file("app.js", JS_APP),
                    file("entry.js", JS_ENTRY),
                    file("package.json", &package),
                    file("package-lock.json", &lock),
                    file("README.md", JS_README),
                    file(".gitignore", "/node_modules\n*.wasm\n"),
                    wit,
                ],
                "npm ci && npm run build",
            )
        }
    };
    Ok((files, build, component))
}

/// Turns the echo project into one that uses a manifest: adds `NAME.toml`,
/// moves Warren's WIT under `wit/deps/` beside wasi:config with a world that
/// imports it, and swaps in the handler and README that use them.
fn with_grants(files: &mut Vec<File>, name: &str, lang: Lang, component: &str) {
    let filled = |template: &str| fill(template, name, component);
    // Rewrites the text of the file at `path`.
    let edit = |files: &mut Vec<File>, path: &str, change: &dyn Fn(&str) -> String| {
        if let Some(file) = files.iter_mut().find(|file| file.path == path) {
            file.text = change(&file.text);
        }
    };
    match lang {
        Lang::Rust => {
            edit(files, "src/lib.rs", &|_| filled(GRANTS_RUST_LIB));
            edit(files, "Cargo.lock", &|_| filled(GRANTS_RUST_LOCK));
            edit(files, "Cargo.toml", &|text| {
                text.replace(
                    "[dependencies]\n",
                    "[dependencies]\n# Outbound HTTP (wasi:http), as the manifest's [http] allows.\nwasip2 = \"1\"\n",
                )
            });
        }
        Lang::Python => edit(files, "app.py", &|_| filled(GRANTS_PYTHON_APP)),
        Lang::Js => {
            edit(files, "app.js", &|_| filled(GRANTS_JS_APP));
            // fetch() is componentize-js's `http` feature.
            edit(files, "package.json", &|text| {
                text.replace("--disable http fetch-event", "--disable fetch-event")
            });
        }
    }
    // The echo README's title and build line, then what the grants change.
    edit(files, "README.md", &|text| {
        let base: String = text
            .lines()
            .take(2)
            .map(|line| format!("{line}\n"))
            .collect();
        format!(
            "{base}{}{}",
            filled(GRANTS_README),
            filled(GRANTS_README_END)
        )
    });
    if let Some(wit) = files
        .iter_mut()
        .find(|file| file.path == "wit/procedure.wit")
    {
        wit.path = "wit/deps/procedure/procedure.wit".into();
    }
    let add = |path: &str, text: String| File {
        path: path.to_owned(),
        text,
        executable: false,
    };
    let mut world = filled(GRANTS_WORLD);
    if lang == Lang::Python {
        world = world.replace(
            "    import wasi:config/store@0.2.0-rc.1;\n",
            "    import wasi:config/store@0.2.0-rc.1;\n    import wasi:http/outgoing-handler@0.2.12;\n",
        );
        for (path, text) in WASI_HTTP_WIT {
            files.push(add(path, text.to_owned()));
        }
    }
    files.push(add("wit/world.wit", world));
    files.push(add(
        "wit/deps/config/store.wit",
        CONFIG_STORE_WIT.to_owned(),
    ));
    files.push(add(
        "wit/deps/config/world.wit",
        CONFIG_WORLD_WIT.to_owned(),
    ));
    files.push(add(&format!("{name}.toml"), filled(GRANTS_MANIFEST)));
}

fn fill(template: &str, name: &str, component: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{component}}", component)
}

/// guest-fib-py's pins, without its comments about this repository.
fn requirements() -> String {
    let pins: String = PYTHON_REQUIREMENTS
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    format!("# componentize-py builds app.py into a component (./build.sh).\n{pins}")
}

/// package.json and package-lock.json for a JavaScript project named
/// `name`: guest-fib-js's pins and lockfile, renamed, with a build script.
fn js_package(name: &str, component: &str) -> anyhow::Result<(String, String)> {
    let source: serde_json::Value =
        serde_json::from_str(JS_PACKAGE).context("guest-fib-js/package.json is not JSON")?;
    let mut package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "description": format!("The {name} procedure: a Warren component"),
        "type": "module",
        "scripts": {
            "build": format!(
                "componentize-js entry.js --wit wit --world-name procedure \
                 --disable http fetch-event --out {component}"
            ),
        },
    });
    for key in ["//", "devDependencies"] {
        if let Some(value) = source.get(key) {
            package[key] = value.clone();
        }
    }
    let mut lock: serde_json::Value =
        serde_json::from_str(JS_LOCK).context("guest-fib-js/package-lock.json is not JSON")?;
    lock["name"] = name.into();
    lock["version"] = "0.1.0".into();
    let root = &mut lock["packages"][""];
    root["name"] = name.into();
    root["version"] = "0.1.0".into();
    Ok((pretty(&package)?, pretty(&lock)?))
}

fn pretty(value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_writes_the_wit_and_a_readme_naming_the_component() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let created = create("my-echo", lang, false, &dir.path().join("p")).unwrap();
            let wit = std::fs::read_to_string(created.dir.join("wit/procedure.wit")).unwrap();
            assert_eq!(wit, WIT);
            let readme = std::fs::read_to_string(created.dir.join("README.md")).unwrap();
            assert!(readme.contains(&created.component), "{lang:?}: {readme}");
            assert_eq!(readme.lines().count(), 5, "{lang:?}: {readme}");
            assert!(!readme.contains("{{"), "{lang:?}: {readme}");
        }
    }

    #[test]
    fn with_grants_every_language_writes_a_manifest_the_host_accepts_and_a_world_importing_config()
    {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let created = create("greeter", lang, true, &dir.path().join("p")).unwrap();
            let read = |path: &str| std::fs::read_to_string(created.dir.join(path)).unwrap();
            let manifest = warren_protocol::manifest::Manifest::parse(&read("greeter.toml"))
                .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
            assert_eq!(
                manifest.config.get("greeting").map(String::as_str),
                Some("hello")
            );
            assert!(manifest.http.is_some(), "{lang:?}");
            assert!(read("wit/world.wit").contains("import wasi:config/store@0.2.0-rc.1"));
            assert_eq!(read("wit/deps/procedure/procedure.wit"), WIT);
            assert!(!created.dir.join("wit/procedure.wit").exists(), "{lang:?}");
            let readme = read("README.md");
            assert!(
                readme.contains("greeter.toml") && !readme.contains("{{"),
                "{readme}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let created = create("greeter", Lang::Rust, true, &dir.path().join("p")).unwrap();
        let cargo = std::fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("wasip2 = \"1\""), "{cargo}");
        let dir = tempfile::tempdir().unwrap();
        let created = create("greeter", Lang::Js, true, &dir.path().join("p")).unwrap();
        let package = std::fs::read_to_string(created.dir.join("package.json")).unwrap();
        assert!(package.contains("--disable fetch-event --out"), "{package}");
    }

    #[test]
    fn the_js_lockfile_is_renamed_and_matches_the_package() {
        let (package, lock) = js_package("my-echo", "my-echo.wasm").unwrap();
        let package: serde_json::Value = serde_json::from_str(&package).unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        assert_eq!(lock["name"], "my-echo");
        assert_eq!(lock["packages"][""]["name"], "my-echo");
        assert_eq!(
            package["devDependencies"],
            lock["packages"][""]["devDependencies"]
        );
    }

    #[test]
    fn a_non_empty_directory_is_refused_and_a_rust_name_must_start_with_a_letter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "").unwrap();
        let error = create("echo", Lang::Js, false, dir.path()).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
        let error = create("1echo", Lang::Rust, false, &dir.path().join("r")).unwrap_err();
        assert!(error.to_string().contains("starts with a digit"), "{error}");
    }
}
