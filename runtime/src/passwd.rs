//! Resolving a container's user by name, in its own root's `/etc/passwd` and `/etc/group`
//! (as runc does): the uid, the primary gid, and the supplementary groups that list the
//! user. Pure: the caller reads the files from the container's root.

use crate::process::User;

/// Who a container's process runs as, in numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The home directory (`HOME` when the environment sets none).
    pub home: String,
}

/// Why a user cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No such user in the image.
    #[error("the user {0:?} is not in the image's /etc/passwd; give a numeric id (runAsUser) or add the user to the image")]
    NoUser(String),
    /// No such group in the image.
    #[error("the group {0:?} is not in the image's /etc/group; give a numeric id (runAsGroup)")]
    NoGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// `(name, gid, members)` of each group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = fields[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((fields[0], fields[2].parse().ok()?, members))
    })
}

/// Resolves `user` against the image's `passwd` and `group` files (empty when absent).
pub fn resolve(user: &User, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user_text, group_text) = match user {
        User::Id { uid, gid } => (uid.to_string(), gid.map(|gid| gid.to_string())),
        User::Name { user, group } => (user.clone(), group.clone()),
    };
    let entry = passwd_entries(passwd)
        .find(|entry| entry.name == user_text || entry.uid.to_string() == user_text);
    let (uid, primary, home, name) = match (&entry, user_text.parse::<u32>()) {
        (Some(entry), _) => (
            entry.uid,
            entry.gid,
            entry.home.to_owned(),
            Some(entry.name),
        ),
        // A number not in the image runs as itself, in group 0 and home /, as runc does.
        (None, Ok(uid)) => (uid, 0, "/".to_owned(), None),
        (None, Err(_)) => return Err(UserError::NoUser(user_text)),
    };
    let gid = match group_text {
        None => primary,
        Some(text) => match group_entries(group)
            .find(|(name, gid, _)| *name == text || gid.to_string() == text)
        {
            Some((_, gid, _)) => gid,
            None => text.parse().map_err(|_| UserError::NoGroup(text.clone()))?,
        },
    };
    let groups = match name {
        Some(name) => group_entries(group)
            .filter(|(_, gid_of, members)| members.contains(&name) && *gid_of != gid)
            .map(|(_, gid, _)| gid)
            .collect(),
        None => Vec::new(),
    };
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\naudio:x:29:app\nvideo:x:44:app,nobody\n";

    #[test]
    fn names_and_numbers_resolve_as_runc_resolves_them() {
        let name = |user: &str, group: Option<&str>| User::Name {
            user: user.into(),
            group: group.map(Into::into),
        };
        assert_eq!(
            resolve(&name("app", None), PASSWD, GROUP),
            Ok(Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![29, 44],
                home: "/home/app".into()
            })
        );
        assert_eq!(
            resolve(&name("nobody", Some("video")), PASSWD, GROUP)
                .unwrap()
                .gid,
            44
        );
        assert_eq!(
            resolve(
                &User::Id {
                    uid: 4242,
                    gid: None
                },
                PASSWD,
                GROUP
            ),
            Ok(Identity {
                uid: 4242,
                gid: 0,
                groups: vec![],
                home: "/".into()
            })
        );
        assert_eq!(
            resolve(
                &User::Id {
                    uid: 1000,
                    gid: Some(7)
                },
                PASSWD,
                GROUP
            )
            .unwrap()
            .gid,
            7
        );
        assert_eq!(
            resolve(&name("ghost", None), PASSWD, GROUP),
            Err(UserError::NoUser("ghost".into()))
        );
        assert_eq!(
            resolve(&name("app", Some("wheel")), PASSWD, GROUP),
            Err(UserError::NoGroup("wheel".into()))
        );
        // An image without the files still runs numeric users.
        assert_eq!(
            resolve(
                &User::Id {
                    uid: 0,
                    gid: Some(0)
                },
                "",
                ""
            )
            .unwrap()
            .uid,
            0
        );
    }
}
