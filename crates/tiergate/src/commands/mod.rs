//! One module per subcommand; `run` dispatches.

pub mod config;
pub mod demo;
pub mod eval;
pub mod eval_confidence;
pub mod generate;
pub mod keys;
pub mod model;
pub mod route;
pub mod serve;

use anyhow::Context;
use tiergate::telemetry::{BoxedLayer, Telemetry};

use crate::cli::{Command, ConfigCommand, EvalCommand, KeysCommand, ModelCommand, RouteCommand};

/// Trace export for the commands that have it (`serve`, as its `[telemetry]` says); the
/// configuration is read again by the command itself.
pub fn start_telemetry(command: &Command) -> anyhow::Result<Option<(Telemetry, BoxedLayer)>> {
    let Command::Serve(args) = command else {
        return Ok(None);
    };
    let config = tiergate::config::Config::load(args.config.as_deref())
        .context("loading the configuration")?;
    tiergate::telemetry::start(&config.telemetry).context("starting trace export ([telemetry])")
}

pub async fn run(command: Command, telemetry: Option<Telemetry>) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args, telemetry).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Generate(args) => generate::run(args).await,
        Command::Route(RouteCommand::Explain(args)) => route::explain(args).await,
        Command::Route(RouteCommand::Calibrate(args)) => route::calibrate(&args),
        Command::Eval(EvalCommand::Routing(args)) => eval::routing(&args),
        Command::Eval(EvalCommand::Confidence(args)) => eval_confidence::run(args).await,
        Command::Config(ConfigCommand::Validate(args)) => config::validate(&args),
        Command::Model(ModelCommand::Keygen(args)) => model::keygen(&args),
        Command::Model(ModelCommand::Sign(args)) => model::sign(&args),
        Command::Model(ModelCommand::Verify(args)) => model::verify(&args),
        Command::Model(ModelCommand::Cpu(args)) => model::cpu(&args),
        Command::Keys(KeysCommand::New(args)) => keys::new(&args),
        Command::Keys(KeysCommand::Hash(args)) => keys::hash(&args),
    }
}
