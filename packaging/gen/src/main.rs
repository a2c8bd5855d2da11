//! `troops-gen OUT_DIR`: renders troops' man pages (`OUT_DIR/man/*.1`) and shell completions
//! (`OUT_DIR/completions/`) from the clap definition the `troops` binary parses with
//! (`troops::cli`), so they always describe the flags that binary accepts. It runs at
//! package-build time (`packaging/build-deb.sh`); nothing of it ships in the product.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{bold, roman, Roff};

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: troops-gen OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("troops-gen: writing into {}: {e}", out.display());
            ExitCode::from(3)
        }
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    // One page per subcommand (`man troops-init`), named as clap_mangen names them...
    clap_mangen::generate_to(troops::cli::Cli::command(), &man)?;
    // ...then troops.1 again, with what an operator looks for besides the flags.
    let mut page = Vec::new();
    main_page(&mut page)?;
    std::fs::write(man.join("troops.1"), page)?;

    let mut cmd = troops::cli::Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "troops", &completions)?;
    }
    Ok(())
}

/// troops(1): clap's sections, plus the environment, files, exit status and where to read more.
fn main_page(out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = troops::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).section("1").manual("troops manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    let mut description = Roff::new();
    description.control("PP", []).text([roman(
        "Every host runs troops. Each host has a bare git repository of deploy code whose branch moves only by \
         fast-forward: when someone pushes to it (a push deploy) or when the daemon fetches the host's remotes (a \
         pull deploy). When the branch moves, the host checks out the commit and runs the steps of the repository's \
         plan, troops.toml, that apply to its roles. There is no central server.",
    )]);
    description.to_writer(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;

    let mut roff = Roff::new();
    section(&mut roff, "ENVIRONMENT");
    for (name, what) in [
        ("TROOPS_STATE_DIR", "The node's state dir, as --state-dir; default /var/lib/troops."),
        ("TROOPS_CONFIG", "The node config file, as --config; default /etc/troops/troops.toml."),
        ("TROOPS_LOG", "What the daemon logs, as a tracing filter (default info; e.g. debug)."),
    ] {
        item(&mut roff, name, what);
    }
    section(&mut roff, "FILES");
    for (path, what) in [
        ("/etc/troops/troops.toml", "The node config: branch, interval, roles, admin_group, [retry], [verify]. A missing file or key means the default."),
        ("/etc/troops/trusted.pgp", "OpenPGP certificates that sign acceptable commits, when [verify] require_signed = true."),
        ("/var/lib/troops/repo/main.git", "The node's bare repository: push here; its remotes are the ones the daemon fetches."),
        ("/var/lib/troops/ssh/", "The node's SSH key (id_ed25519) for fetching, and known_hosts for the remotes' host keys."),
        ("/var/lib/troops/runs/", "One folder per run: run.json and output.log."),
        ("/usr/lib/systemd/system/troops.service", "Runs troops daemon; journalctl -u troops shows its log."),
    ] {
        item(&mut roff, path, what);
    }
    section(&mut roff, "EXIT STATUS");
    for (code, what) in [
        ("0", "Success (or, for pull, nothing to do)."),
        ("1", "A run failed; for has-role, the node does not have the role."),
        ("2", "Bad input: usage, config or plan. The message names the file, line and key."),
        ("3", "The environment failed: git, network, IO, or the lock."),
    ] {
        item(&mut roff, code, what);
    }
    section(&mut roff, "EXAMPLES");
    roff.control("PP", []).text([roman(
        "Make a node that follows a mirror; then deploy it by pushing, as root or a member of admin_group, and watch:",
    )]);
    roff.control("RS", ["4"]).control("nf", []);
    for line in [
        "troops init --remote origin=ssh://git@git.example.com/deploy.git --role web",
        "git push web-1.example.com:/var/lib/troops/repo/main.git main",
        "troops status",
        "journalctl -u troops -f",
    ] {
        roff.text([roman(line)]).control("br", []);
    }
    roff.control("fi", []).control("RE", []);
    section(&mut roff, "SEE ALSO");
    let mut pages: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("troops-{}(1)", s.get_name()))
        .collect();
    pages.extend(["git(1)".to_owned(), "systemd.service(5)".to_owned(), "journalctl(1)".to_owned()]);
    roff.control("PP", []).text([roman(pages.join(", "))]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn item(roff: &mut Roff, name: &str, what: &str) {
    roff.control("TP", []).text([bold(name)]).text([roman(what)]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_page_and_completion() {
        let out = std::env::temp_dir().join(format!("troops-gen-test-{}", std::process::id()));
        super::generate(&out).unwrap();
        let page = std::fs::read_to_string(out.join("man/troops.1")).unwrap();
        for section in ["SUBCOMMANDS", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO"] {
            assert!(page.contains(section), "troops.1 lacks {section}");
        }
        for file in [
            "man/troops-init.1",
            "man/troops-pull.1",
            "completions/troops.bash",
            "completions/_troops",
            "completions/troops.fish",
        ] {
            assert!(out.join(file).is_file(), "{file} was not written");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
