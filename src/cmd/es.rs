//! `dfp es`: Elasticsearch / OpenSearch set-up for `elasticsearch-sink` (index templates), and where the
//! Kibana objects are.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use dfp_stages::sinks::elasticsearch::{alerts_template, incidents_template, EsAuth, EsClient};

/// Arguments of `dfp es`.
#[derive(Args)]
pub(crate) struct EsArgs {
    #[command(subcommand)]
    command: EsCommand,
}

/// What `dfp es` does.
#[derive(Subcommand)]
pub(crate) enum EsCommand {
    /// Install the index templates for scored events / alerts (`dfp-alerts`) and incidents
    /// (`dfp-incidents`): keywords for user, app, country, browser; `ip` for the address; `date` for event
    /// times; floats for scores and z-scores; `geo_point` for `geo`. Re-running replaces them.
    Setup(SetupArgs),
}

/// Arguments of `dfp es setup`.
#[derive(Args)]
pub(crate) struct SetupArgs {
    /// The cluster, `http(s)://host:port`.
    #[arg(long, value_name = "URL", required_unless_present = "print")]
    url: Option<String>,
    /// The log family whose columns the alerts template maps (`dfp families` lists them).
    #[arg(long, default_value = "azure")]
    family: String,
    /// The index pattern of scored events / alerts (the sink's `index` with its time fields as `*`).
    #[arg(long, default_value = "dfp-alerts-*")]
    alerts_index: String,
    /// The index pattern of incidents.
    #[arg(long, default_value = "dfp-incidents*")]
    incidents_index: String,
    /// Make the alerts template a data-stream template (for a sink with `data_stream: true`).
    #[arg(long)]
    data_stream: bool,
    /// Basic auth: the user name (the password from --password-env or --password-file).
    #[arg(long)]
    username: Option<String>,
    /// Basic auth: the variable holding the password.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Basic auth: the file holding the password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<String>,
    /// The variable holding an API key (the base64 "encoded" value).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// The variable holding a bearer token.
    #[arg(long, value_name = "VAR")]
    bearer_env: Option<String>,
    /// A PEM file of CA certificates to trust for https://.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    /// Print the two templates as JSON instead of installing them.
    #[arg(long)]
    print: bool,
}

/// `dfp es …`.
pub(crate) fn es(args: EsArgs) -> Result<ExitCode> {
    match args.command {
        EsCommand::Setup(a) => setup(a),
    }
}

fn setup(a: SetupArgs) -> Result<ExitCode> {
    let families = dfp_core::Registry::global().families().clone();
    let family = families.require(&a.family).map_err(|e| anyhow!("--family: {e}"))?;
    let alerts = alerts_template(family, std::slice::from_ref(&a.alerts_index), a.data_stream);
    let incidents = incidents_template(std::slice::from_ref(&a.incidents_index));
    if a.print {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "dfp-alerts": alerts, "dfp-incidents": incidents }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let url = a.url.as_deref().unwrap_or_default();
    let auth = EsAuth {
        username: a.username,
        password_env: a.password_env,
        password_file: a.password_file,
        api_key_env: a.api_key_env,
        bearer_env: a.bearer_env,
        ..Default::default()
    };
    let client = EsClient::new(url, &auth, a.ca_file.as_deref(), Duration::from_secs(30))?;
    let info = client.info().with_context(|| format!("cannot reach {url}"))?;
    println!("{url}: {} {}", info.distribution, info.version);
    client.put_index_template("dfp-alerts", &alerts)?;
    println!(
        "installed index template dfp-alerts for {}{}",
        a.alerts_index,
        if a.data_stream { " (data stream)" } else { "" }
    );
    client.put_index_template("dfp-incidents", &incidents)?;
    println!("installed index template dfp-incidents for {}", a.incidents_index);
    println!("Kibana: import deploy/kibana/dfp-objects.ndjson (Stack Management → Saved objects → Import)");
    Ok(ExitCode::SUCCESS)
}
