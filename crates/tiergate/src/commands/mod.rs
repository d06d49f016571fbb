//! One module per subcommand; `run` dispatches.

pub mod generate;

use crate::cli::Command;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(args) => generate::run(args).await,
    }
}
