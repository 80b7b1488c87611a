//! The `tenantry` binary: parse the command line, set up logging, dispatch.
use anyhow::{Context as _, anyhow};
use clap::Parser as _;
use tenantry::cli::{Cli, Command, TokenArgs};
use tenantry::domain::TenantId;
use tenantry::tenants::{Catalog, KeySource};

/// mimalloc instead of glibc's allocator: the request path allocates and frees many small
/// buffers across threads, where glibc's malloc/free took about a tenth of the CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option numbers (`mi_option_e` in its `mimalloc.h`; libmimalloc-sys names neither).
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// mimalloc's default purge delay, in ms.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Start-up (the embedding model's weights read through a buffer, the tokenizers' tables
/// built) frees far more than it keeps, and an idle thread never purges what it freed: so
/// purge at once until the process is ready, commit arena memory only when used, and at
/// ready return what start-up left ([`tenantry::runtime::started`]), then purge lazily again
/// for speed. The crate's only `unsafe`: mimalloc's options have no safe binding.
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mi_option_set and mi_collect only change mimalloc's settings and caches; they
    // are safe to call from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    // SAFETY: as above.
    tenantry::runtime::on_started(|| unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    });
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tenantry::install_crypto_provider();
    // Run as `kubectl-tenantry` (kubectl's plugin name), the binary is `tenantry kubectl`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if tenantry::cli::invoked_as_plugin(argv.first().map(|a| a.as_os_str())) {
        let plugin = tenantry::cli::Plugin::parse_from(argv);
        return tenantry::kubectl::run(plugin.args).await;
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Serve(args) => {
            let telemetry = tenantry::telemetry::init();
            let served = tenantry::serve::run(args).await;
            telemetry.shutdown().await;
            served?;
        }
        Command::Token(args) => println!("{}", token(&args)?),
        Command::Crd => print!("{}", tenantry::crd::crd_yaml()),
        Command::Kubectl(args) => tenantry::kubectl::run(args).await?,
        Command::Healthcheck(args) => {
            if let Err(e) = tenantry::healthcheck::check(&args).await {
                eprintln!("unhealthy: {e}");
                std::process::exit(1);
            }
        }
        Command::Ingest(args) => ingest(args).await?,
        Command::Export(args) => export(args).await?,
        Command::Import(args) => import(args).await?,
        Command::Operator(args) => {
            let telemetry = tenantry::telemetry::init();
            let ran = tenantry::operator::run(args).await;
            telemetry.shutdown().await;
            ran?;
        }
    }
    Ok(())
}

/// Uploads documents and prints a summary; fails when any file failed.
async fn ingest(args: tenantry::cli::IngestArgs) -> anyhow::Result<()> {
    let report = tenantry::ingest::run(tenantry::ingest::IngestOptions {
        url: args.tenant_url,
        token: args.token,
        paths: args.paths,
        concurrency: args.concurrency,
        progress: !args.no_progress,
    })
    .await?;
    for path in &report.unsupported {
        eprintln!("skipped (unsupported kind): {}", path.display());
    }
    for (path, reason) in &report.failed {
        eprintln!("failed: {}: {reason}", path.display());
    }
    println!(
        "ingested {}, already present {}, unsupported {}, failed {}",
        report.ingested,
        report.skipped,
        report.unsupported.len(),
        report.failed.len()
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{} file(s) failed", report.failed.len()))
    }
}

/// Exports a tenant's documents; the summary goes to stderr (stdout may be the export).
async fn export(args: tenantry::cli::ExportArgs) -> anyhow::Result<()> {
    let target = tenantry::transfer::Target {
        url: args.api.tenant_url,
        token: args.api.token,
    };
    let progress = !args.api.no_progress;
    let report = match args.output.filter(|p| p.as_os_str() != "-") {
        Some(path) => tenantry::transfer::export_to_file(&target, &path, progress).await?,
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            tenantry::transfer::export(&target, &mut out, progress).await?
        }
    };
    eprintln!("exported {} documents", report.documents);
    if report.inexact > 0 {
        eprintln!(
            "{} of them were stored without their text: theirs is joined from their chunks",
            report.inexact
        );
    }
    Ok(())
}

/// Imports a JSONL export and prints a summary; fails when any line failed.
async fn import(args: tenantry::cli::ImportArgs) -> anyhow::Result<()> {
    let target = tenantry::transfer::Target {
        url: args.api.tenant_url,
        token: args.api.token,
    };
    let input = args.input.filter(|p| p.as_os_str() != "-");
    let report = tenantry::transfer::import(
        &target,
        input.as_deref(),
        args.concurrency,
        !args.api.no_progress,
    )
    .await?;
    for (line, reason) in &report.failed {
        eprintln!("failed: line {line}: {reason}");
    }
    println!(
        "imported {}, already present {}, failed {}",
        report.imported,
        report.skipped,
        report.failed.len()
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{} line(s) failed", report.failed.len()))
    }
}

/// Mints a token with the tenant's current key (creating the key like `serve` would).
fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let tenant = TenantId::parse(&args.tenant)?;
    let catalog = Catalog::new(
        args.tenants.clone(),
        KeySource {
            dir: args.data_dir.join("keys"),
            create_missing: true,
        },
        String::new(),
    );
    catalog.reload();
    let config = catalog.get(&tenant).with_context(|| {
        format!(
            "tenant {tenant} is not defined (or invalid) in {}",
            args.tenants.display()
        )
    })?;
    tenantry::auth::keys::mint_checked(
        &config.keyring,
        &tenant,
        &args.sub,
        args.ttl,
        config.spec.auth.max_token_lifetime(),
    )
    .map_err(|e| anyhow!(e))
}
