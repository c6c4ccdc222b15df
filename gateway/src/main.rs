//! The `vizora-gateway` binary: the command line is `cli::main` in the library; the demo is a
//! module of the binary, so the library's dependencies stay what a server needs.

mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vizora_gateway::cli::main(demo::run).await
}
