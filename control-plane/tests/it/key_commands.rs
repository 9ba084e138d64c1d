//! `keygate key generate` and `keygate key inspect`: output, exit codes, and that no secret is printed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn keygate(args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command.args(args).env_remove("KEYGATE_KEY_PREFIX").env_remove("KEYGATE_REGION");
    command.envs(envs.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn generate(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = keygate(&[&["key", "generate"], args].concat(), envs, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    text.trim_end().to_owned()
}

fn inspect(key: &str) -> (Option<i32>, Value, String) {
    let out = keygate(&["key", "inspect", key], &[], None);
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code(), serde_json::from_str(&stdout).unwrap(), stdout)
}

#[test]
fn a_generated_key_inspects_as_valid_without_showing_its_secret() {
    let key = generate(&[], &[]);
    assert!(key.starts_with("fraiseql_us_east_1_"), "{key}");
    let (code, json, stdout) = inspect(&key);
    assert_eq!(code, Some(0));
    let fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["hash", "key_id", "prefix", "region", "valid"]);
    assert_eq!(json["valid"], true);
    assert_eq!(json["prefix"], "fraiseql");
    assert_eq!(json["region"], "us_east_1");
    assert_eq!(json["key_id"], key.split('_').nth(4).unwrap());
    assert_eq!(json["hash"], keygate_shared::sha256_hex(&key));
    assert!(!stdout.contains(&key[key.len() - 49..]), "inspect printed the secret: {stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn prefix_and_region_come_from_flags_or_the_environment() {
    let key = generate(&["--prefix", "acme", "--region", "eu_west_2"], &[]);
    assert!(key.starts_with("acme_eu_west_2_"), "{key}");
    let key = generate(&[], &[("KEYGATE_KEY_PREFIX", "k9"), ("KEYGATE_REGION", "local")]);
    assert!(key.starts_with("k9_local_"), "{key}");
    assert_eq!(inspect(&key).1["region"], "local");
}

#[test]
fn a_bad_prefix_is_a_usage_error() {
    let out = keygate(&["key", "generate", "--prefix", "Acme"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefix"));
}

#[test]
fn invalid_keys_exit_1_with_their_error_code() {
    let key = generate(&[], &[]);
    let mut wrong_checksum = key.clone();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == '0' { '1' } else { '0' });
    for (text, error) in
        [(wrong_checksum.as_str(), "checksum_mismatch"), ("", "empty"), ("fraiseql_us_east_1_x_y", "invalid_secret")]
    {
        let (code, json, stdout) = inspect(text);
        assert_eq!(code, Some(1), "{text}");
        assert_eq!(json, serde_json::json!({"valid": false, "error": error}), "{text}");
        if text.len() > 49 {
            assert!(!stdout.contains(&text[text.len() - 49..]));
        }
    }
}

#[test]
fn inspect_reads_the_key_from_stdin_when_given_a_dash() {
    let key = generate(&[], &[]);
    let out = keygate(&["key", "inspect", "-"], &[], Some(&format!("{key}\n")));
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hash"], keygate_shared::sha256_hex(&key));
}
