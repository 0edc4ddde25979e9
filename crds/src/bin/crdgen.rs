//! Prints the fleet's CRDs as YAML (stdout), or writes one file per CRD into the
//! directory given as the first argument (used for crds/yaml and the Helm chart).

fn main() -> std::io::Result<()> {
    let docs = media_crds::crds_yaml();
    match std::env::args().nth(1) {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in docs {
                std::fs::write(std::path::Path::new(&dir).join(file), yaml)?;
            }
        }
        None => {
            for (_, yaml) in docs {
                print!("---\n{yaml}");
            }
        }
    }
    Ok(())
}
