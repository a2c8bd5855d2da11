//! `troops init` as a new operator meets it: it names the host (and sets the name with
//! `--hostname`), says how each remote is fetched and warns of a path with no repository, never
//! quietly replaces a remote or a hostname, and a fetch from a mistyped path says what is wrong.

use crate::support::{combined, text, Env};

#[test]
fn init_names_the_host_and_each_remote_and_a_mistyped_path_says_no_repository() {
    let env = Env::new();
    env.write_config("roles = [\"web\"]\n");
    let mirror = env.path("mirror.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &mirror.display().to_string()]);
    let typo = env.path("mirorr.git");
    // A relative path, as typed in the test dir: the daemon fetches from `/`, so it is made absolute.
    let out = env
        .troops(&[
            "init",
            "--hostname",
            "web-7",
            "--remote",
            "origin=mirror.git",
            "--remote",
            "typo=mirorr.git",
            "--remote",
            "gone=file:///nonexistent/deploy.git",
            "--remote",
            "ssh=git@git.example.com:ops/deploy.git",
        ])
        .current_dir(env.tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let said = text(&out.stdout);
    let config = std::fs::read_to_string(&env.config).unwrap();
    assert_eq!(config, "roles = [\"web\"]\nhostname = \"web-7\"\n");
    for line in [
        format!("host      web-7 (named in {})", env.config.display()),
        format!("remote    origin {} (a path on this host, read in-process)", mirror.display()),
        format!("remote    typo {} (a path on this host, read in-process)", typo.display()),
        format!("warning   remote typo: no repository at {} (yet)", typo.display()),
        "warning   remote gone: no repository at /nonexistent/deploy.git (yet)".into(),
        "remote    ssh git@git.example.com:ops/deploy.git (over SSH, with this node's key)".into(),
        "for secrets, the deploy repo keeps it as keys/web-7.pub".into(),
    ] {
        assert!(said.contains(&line), "no {line:?} in:\n{said}");
    }
    assert!(!said.contains("warning   remote origin"), "{said}");
    let key = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    assert!(key.trim_end().ends_with(" troops@web-7"), "{key}");

    // The fetch says the same of the mistyped path, not "unsupported URL protocol".
    std::fs::remove_dir_all(env.path("mirror.git")).unwrap();
    let out = env.run(&["pull"]);
    let pulled = combined(&out);
    assert_eq!(out.status.code(), Some(3), "{pulled}");
    for missing in [&mirror, &typo] {
        let line = format!("could not be fetched: no repository at {}", missing.display());
        assert!(pulled.contains(&line), "no {line:?} in:\n{pulled}");
    }
    assert!(pulled.contains("could not be fetched: no repository at /nonexistent/deploy.git"), "{pulled}");
    assert!(!pulled.contains("unsupported URL protocol"), "{pulled}");
}

#[test]
fn init_never_quietly_replaces_a_remote_or_the_hostname() {
    let env = Env::new();
    let node = env.repo().display().to_string();
    let url = |name: &str| env.git(&env.home, &["--git-dir", &node, "remote", "get-url", name]);
    env.ok(&["init", "--remote", "origin=/srv/deploy.git"]);
    let config = std::fs::read_to_string(&env.config).unwrap();

    // Another URL for a remote the node has: refused, naming both and the command that moves it;
    // nothing else of the same init is done either.
    let out = env.run(&["init", "--role", "db", "--remote", "origin=/srv/other.git"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "remote origin of {node} is /srv/deploy.git, not /srv/other.git; troops init does not replace a remote: \
             to move it, git --git-dir={node} remote set-url origin /srv/other.git"
        )),
        "{stderr}"
    );
    assert_eq!(url("origin"), "/srv/deploy.git");
    assert_eq!(std::fs::read_to_string(&env.config).unwrap(), config, "the refused init wrote the config");
    // The same URL again is no change; a new name is added.
    env.ok(&["init", "--remote", "origin=/srv/deploy.git", "--remote", "backup=/srv/backup.git"]);
    assert_eq!((url("origin"), url("backup")), ("/srv/deploy.git".into(), "/srv/backup.git".into()));

    // The config names the host web-1 (Env's): another name is refused, the same one is fine.
    let out = env.run(&["init", "--hostname", "web-2"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert!(
        text(&out.stderr).contains("names this host \"web-1\" already, not \"web-2\""),
        "{}",
        combined(&out)
    );
    env.ok(&["init", "--hostname", "web-1"]);
    assert_eq!(std::fs::read_to_string(&env.config).unwrap(), config);
    // A name no node may have is refused by the config's own rules.
    env.write_config("");
    let out = env.run(&["init", "--hostname", "web\u{1b}[2J"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert!(
        text(&out.stderr).contains("`hostname`: \"web\\u{1b}[2J\" has a control character"),
        "{}",
        combined(&out)
    );
    assert_eq!(std::fs::read_to_string(&env.config).unwrap(), "");
}

#[test]
fn a_node_named_by_relative_paths_runs_its_steps_by_deploy_pull_and_push() {
    let env = Env::new();
    let work = env.deploy_repo("work");
    let mirror = env.bare("mirror.git");
    let plan = "[[step]]\nname = \"x\"\nrun = \"echo ran in $PWD\"\n";
    work.commit(&env, &[("troops.toml", plan)], "first");
    let pushed = work.push(&env, &mirror.display().to_string(), &["HEAD:main"]);
    assert!(pushed.status.success(), "{}", combined(&pushed));
    // As an operator types them in the test dir: the state dir and config relative to it.
    let relative = |args: &[&str]| {
        let mut command = env.troops(&[&["--state-dir", "state", "--config", "troops.toml"], args].concat());
        command.current_dir(env.tmp.path()).env_remove("TROOPS_STATE_DIR").env_remove("TROOPS_CONFIG");
        command.output().unwrap()
    };
    let out = relative(&["init", "--remote", "origin=mirror.git"]);
    assert!(out.status.success(), "{}", combined(&out));
    let out = relative(&["pull"]);
    assert!(out.status.success(), "{}", combined(&out));
    assert!(text(&out.stdout).contains("ran in /"), "{}", combined(&out));
    let out = relative(&["deploy"]);
    assert!(out.status.success(), "{}", combined(&out));
    // The hooks find the node by what init recorded, from the node repo's directory.
    let second = work.commit(&env, &[("x", "2")], "second");
    let mut push = work.push_command(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    let pushed = push.env_remove("TROOPS_STATE_DIR").env_remove("TROOPS_CONFIG").output().unwrap();
    assert!(pushed.status.success(), "{}", combined(&pushed));
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));
}
