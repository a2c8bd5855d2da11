//! `troops secrets encrypt|edit|rekey|check`: the operator's side of secrets, run in a clone of
//! the deploy repo (the current directory); no node needed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use troops_core::mech::secrets::Identity;
use troops_core::model::plan::Plan;
use troops_core::Exit;
use troops_operator::secrets::{self, Edited, NoAdmin, RepoKeys};

use crate::cli::{IdentityArgs, SecretsCommand};

pub fn run(command: SecretsCommand) -> Result<ExitCode> {
    let repo = Path::new(".");
    let plan_path = Path::new(troops_core::model::plan::FILE_NAME);
    let plan = Plan::parse(plan_path, &troops_core::model::plan::read(plan_path)?, Some(repo))?;
    let mut stdout = std::io::stdout();
    match command {
        SecretsCommand::Encrypt(args) => {
            let plaintext = if args.file == Path::new("-") {
                bounded(std::io::stdin().lock(), "stdin")?
            } else {
                // The operator's own file, named by them: a pipe (`<(pass show db)`) is fine.
                let file = std::fs::File::open(&args.file)
                    .with_context(|| format!("reading {}", args.file.display()))?;
                bounded(file, &args.file.display().to_string())?
            };
            let no_admin = if args.allow_no_admin { NoAdmin::Allow } else { NoAdmin::Refuse };
            let file = secrets::encrypt_into(repo, &plan, &args.name, &plaintext, no_admin)?;
            writeln!(stdout, "{}: secret `{}` encrypted", file.display(), args.name)?;
        }
        SecretsCommand::Edit(args) => {
            let identity = identity(&args.identity)?;
            let edited = secrets::edit(repo, &plan, &args.name, &identity, run_editor)?;
            let file = secrets::find(&plan, &args.name)?.file.display();
            match edited {
                Edited::Changed => writeln!(stdout, "{file}: secret `{}` changed", args.name)?,
                Edited::Unchanged => {
                    writeln!(stdout, "{file}: secret `{}` unchanged; file left as it was", args.name)?
                }
            }
        }
        SecretsCommand::Rekey(args) => {
            for file in secrets::rekey(repo, &plan, &identity(&args)?)? {
                writeln!(stdout, "{}: rekeyed", file.display())?;
            }
        }
        SecretsCommand::Check => {
            let problems = secrets::check(repo, &plan)?;
            for problem in &problems {
                writeln!(stdout, "{problem}")?;
            }
            if !problems.is_empty() {
                return Ok(Exit::Failed.into());
            }
            let hosts_only = if !plan.secrets.is_empty() && RepoKeys::load(repo)?.admins.is_empty() {
                format!(" ({}/ holds no key: only their hosts can decrypt them)", secrets::ADMIN_KEYS_DIR)
            } else {
                String::new()
            };
            writeln!(stdout, "{} secrets: ok{hosts_only}", plan.secrets.len())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// All of `input`, refused past the largest secret file troops writes (which holds a little more
/// than its plaintext): a plaintext that large is not a secret, and `/dev/zero` has no end.
fn bounded(input: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut plaintext = Vec::new();
    input
        .take(secrets::MAX_SECRET_FILE + 1)
        .read_to_end(&mut plaintext)
        .with_context(|| format!("reading {what}"))?;
    if plaintext.len() as u64 > secrets::MAX_SECRET_FILE {
        anyhow::bail!(troops_core::Error::Input(format!(
            "{what} holds more than {} bytes, more than a secret troops encrypts",
            secrets::MAX_SECRET_FILE
        )));
    }
    Ok(plaintext)
}

/// The admin's key: `--identity`, else `~/.ssh/id_ed25519`.
fn identity(args: &IdentityArgs) -> Result<Identity> {
    let path = match &args.identity {
        Some(path) => path.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; give the key with --identity")?;
            PathBuf::from(home).join(".ssh/id_ed25519")
        }
    };
    Ok(Identity::load(&path)?)
}

/// Runs `$EDITOR` (through the shell, so it may carry arguments) on `path`.
fn run_editor(path: &Path) -> troops_core::Result<()> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| troops_core::Error::Input("EDITOR is not set; set it to edit a secret".into()))?;
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("{editor} \"$1\""), "sh"])
        .arg(path)
        .status()
        .map_err(|e| troops_core::Error::io(format!("running $EDITOR ({editor})"), e))?;
    if !status.success() {
        return Err(troops_core::Error::Input(format!(
            "$EDITOR ({editor}) failed ({status}); the secret is left as it was"
        )));
    }
    Ok(())
}
