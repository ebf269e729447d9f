use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match pimage::cli::run(pimage::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pimage: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
