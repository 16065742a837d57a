//! pyftpdlib (Debian's python3-pyftpdlib) as the real FTP server in the
//! server namespace: user `u`, password `p`, full rights on its root.

use std::{path::Path, time::Duration};

use crate::{
    rig::{Ns, Rig},
    util::{PYTHON, wait_for},
};

/// Starts the server on port 21 (IPv4 and IPv6), serving `root`; returns
/// its process id.
pub fn start(rig: &mut Rig, root: &Path) -> anyhow::Result<u32> {
    std::fs::create_dir_all(root)?;
    let server = format!(
        "from pyftpdlib.authorizers import DummyAuthorizer\nfrom pyftpdlib.handlers import FTPHandler\n\
         from pyftpdlib.servers import FTPServer\nimport logging\nlogging.basicConfig(level=logging.WARNING)\n\
         a=DummyAuthorizer(); a.add_user('u','p','{}',perm='elradfmwMT')\n\
         h=FTPHandler; h.authorizer=a; h.passive_ports=range(30000,30200)\n\
         FTPServer(('::',21),h).serve_forever()\n",
        root.display()
    );
    let mut cmd = rig.cmd(Ns::Server, PYTHON);
    cmd.args(["-c", &server]);
    let log = rig.dir().join("ftpd.log");
    let pid = rig.spawn(cmd, &log)?;
    wait_for("pyftpdlib to listen", Duration::from_secs(10), || {
        let out = rig.run(Ns::Server, "ss", &["-Hltn", "sport = :21"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    Ok(pid)
}
