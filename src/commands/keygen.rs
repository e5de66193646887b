//! `leaflock-backup keygen --out FILE`: a new Ed25519 signing key pair (see
//! `signing.rs`). The private key goes to FILE (mode 0600, never overwritten) for
//! `--signing-key-file`; the public key to FILE.pub and to standard output, for
//! `--trusted-key`. Nothing secret is printed.

use crate::cli::KeygenArgs;
use crate::error::usage;
use crate::signing;
use anyhow::Result;

pub fn execute(args: &KeygenArgs) -> Result<()> {
    if args.out.as_os_str().is_empty() {
        return usage("--out / LEAFLOCK_BACKUP_KEYGEN_OUT: give the private key's file");
    }
    if args.out.exists() {
        return usage(format!(
            "--out / LEAFLOCK_BACKUP_KEYGEN_OUT: {} exists; a key is never overwritten",
            args.out.display()
        ));
    }
    let public = signing::keygen(&args.out)?;
    tracing::info!(
        private_key = %args.out.display(),
        key = %public.fingerprint(),
        "signing key written (mode 0600); give it to `run` and `drill` with --signing-key-file, \
         and the public key to every reading command with --trusted-key"
    );
    println!("{}", public.to_text());
    Ok(())
}
