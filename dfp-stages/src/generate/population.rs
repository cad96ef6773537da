//! The synthetic workforce: users with a home city, working hours, favourite apps, devices, addresses and
//! habits, drawn once from the seed.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::seq::IndexedRandom;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::format::{duo_key, name_uuid, Uuid};
use super::tables::{
    APPS, APP_EXCHANGE, APP_TEAMS, CITIES, COMPUTER_PLATFORMS, DEPARTMENTS, DEPT_IT, DOMAIN, FIRST_NAMES, LAST_NAMES,
    PLATFORMS, P_ANDROID, P_IOS,
};

/// A Duo authentication factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Factor {
    DuoPush,
    PhoneCall,
    Passcode,
    SmsPasscode,
    RememberedDevice,
    NotAvailable,
}

impl Factor {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Factor::DuoPush => "duo_push",
            Factor::PhoneCall => "phone_call",
            Factor::Passcode => "passcode",
            Factor::SmsPasscode => "sms_passcode",
            Factor::RememberedDevice => "remembered_device",
            Factor::NotAvailable => "not_available",
        }
    }
}

/// A device that signs in: a user's computer or phone, or an attacker's machine.
pub(crate) struct Device {
    /// Display name; empty for devices unknown to the directory.
    pub(crate) name: String,
    /// Index into [`PLATFORMS`].
    pub(crate) platform: usize,
    /// Directory device id of registered devices.
    pub(crate) device_id: Option<Uuid>,
    pub(crate) managed: bool,
    pub(crate) compliant: bool,
    pub(crate) trust_type: &'static str,
}

/// One person and their habits.
pub(crate) struct User {
    pub(crate) display_name: String,
    pub(crate) first_name: &'static str,
    /// `alice.smith@contoso.com`
    pub(crate) upn: String,
    pub(crate) object_id: Uuid,
    pub(crate) duo_key: String,
    pub(crate) department: usize,
    /// Index into [`CITIES`].
    pub(crate) home: usize,
    /// Working hours, seconds after local midnight.
    pub(crate) work_start: u32,
    pub(crate) work_end: u32,
    /// Sign-ins per working day.
    pub(crate) volume: f64,
    /// The first day the user signs in (0: from the start; later for new joiners).
    pub(crate) joined: u32,
    /// Weekend volume as a share of `volume`.
    pub(crate) weekend_factor: f64,
    pub(crate) failure_rate: f64,
    pub(crate) noninteractive_rate: f64,
    /// Favourite apps (indices into [`APPS`]) and their cumulative weights.
    pub(crate) apps: Vec<usize>,
    pub(crate) app_cumulative: Vec<f64>,
    /// Indices into [`Population::devices`]: the computer first, then maybe a phone.
    pub(crate) devices: Vec<usize>,
    /// Probability that a session uses the first device.
    pub(crate) primary_share: f64,
    pub(crate) home_ips: Vec<IpAddr>,
    /// Duo authentication device, e.g. `iPhone (555-0134)`.
    pub(crate) phone_name: String,
    pub(crate) factor: Factor,
    pub(crate) remembered_rate: f64,
}

impl User {
    /// The e-mail local part (`alice.smith`), Duo's user name.
    pub(crate) fn local_part(&self) -> &str {
        self.upn.split('@').next().unwrap_or(&self.upn)
    }

    /// Draws one of the favourite apps by weight.
    pub(crate) fn pick_app(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.app_cumulative.last().copied().unwrap_or(1.0);
        let x = rng.random_range(0.0..total);
        let i = self.app_cumulative.partition_point(|&c| c <= x);
        self.apps[i.min(self.apps.len() - 1)]
    }
}

/// Everyone, their devices, and the per-app identifiers.
pub(crate) struct Population {
    pub(crate) tenant: Uuid,
    pub(crate) users: Vec<User>,
    pub(crate) devices: Vec<Device>,
    /// Azure application id per entry of [`APPS`].
    pub(crate) app_ids: Vec<Uuid>,
    /// Duo integration key per entry of [`APPS`].
    pub(crate) app_keys: Vec<String>,
}

fn alnum(rng: &mut ChaCha8Rng, len: usize) -> String {
    const CHARS: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len).map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())])).collect()
}

/// Draws an index from `(item, weight)` pairs.
pub(crate) fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total.max(1));
    for &(item, w) in items {
        if x < w {
            return item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// A residential address in `city` (shared address space `100.64.0.0/10`).
pub(crate) fn residential_ip(rng: &mut ChaCha8Rng, city: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64 + city as u8, rng.random_range(0..=255), rng.random_range(2..=254)))
}

/// A mobile-carrier address in `city` (shared address space, upper half).
pub(crate) fn mobile_ip(rng: &mut ChaCha8Rng, city: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 96 + city as u8, rng.random_range(0..=255), rng.random_range(2..=254)))
}

/// One of the office egress addresses of `city` (benchmarking block `198.18.0.0/16`).
pub(crate) fn office_ip(rng: &mut ChaCha8Rng, city: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, city as u8, rng.random_range(10..14)))
}

/// A hosting-provider address (benchmarking block `198.19.0.0/16`).
pub(crate) fn hosting_ip(rng: &mut ChaCha8Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, rng.random_range(0..=255), rng.random_range(2..=254)))
}

fn home_ipv6(rng: &mut ChaCha8Rng, city: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x1000 + city as u16,
        rng.random_range(0..=0xffff),
        0,
        0,
        0,
        rng.random_range(1..=0xff),
    ))
}

impl Population {
    /// Draws `n` users.
    pub(crate) fn build(n: usize, rng: &mut ChaCha8Rng) -> Population {
        let tenant = Uuid::v4(rng.random());
        let app_ids = APPS.iter().map(|a| name_uuid(a.name)).collect();
        let app_keys = APPS.iter().map(|a| duo_key("DI", name_uuid(a.name).0)).collect();
        let home_cities: Vec<(usize, u32)> = CITIES
            .iter()
            .enumerate()
            .filter(|(_, c)| c.office)
            .map(|(i, c)| (i, if c.country_code == "US" { 6 } else { 3 }))
            .collect();
        let mut population =
            Population { tenant, users: Vec::with_capacity(n), devices: Vec::new(), app_ids, app_keys };
        let mut taken = HashSet::new();
        for _ in 0..n {
            let (first, last) = unique_name(rng, &mut taken);
            let user = population.draw_user(rng, first, &last, &home_cities);
            population.users.push(user);
        }
        population
    }

    fn draw_user(&mut self, rng: &mut ChaCha8Rng, first: &'static str, last: &str, homes: &[(usize, u32)]) -> User {
        let local = format!("{}.{}", first.to_lowercase(), last.to_lowercase());
        let upn = format!("{local}@{DOMAIN}");
        let department = if rng.random_bool(0.08) { DEPT_IT } else { rng.random_range(0..DEPARTMENTS.len() - 1) };
        let home = weighted(rng, homes);
        let work_start = rng.random_range(7 * 3600..10 * 3600);
        let work_end = work_start + rng.random_range(8 * 3600..10 * 3600);
        let volume = (5f64.ln() + rng.random_range(0.0..1.0) * (80f64.ln() - 5f64.ln())).exp();
        let (apps, app_cumulative) = favourite_apps(rng, department);
        let computer = weighted(rng, &COMPUTER_PLATFORMS);
        let mut devices = vec![self.add_device(computer_device(rng, first, computer))];
        // Everyone has a phone for the second factor; 60% also sign in with it.
        let phone = if rng.random_bool(0.65) { P_IOS } else { P_ANDROID };
        if rng.random_bool(0.6) {
            devices.push(self.add_device(phone_device(rng, first, phone)));
        }
        let mut home_ips = Vec::new();
        let ipv6 = rng.random_bool(0.08);
        for _ in 0..rng.random_range(1..=2) {
            home_ips.push(if ipv6 { home_ipv6(rng, home) } else { residential_ip(rng, home) });
        }
        let phone_name = if phone == P_IOS { "iPhone" } else { "Pixel 8" };
        let factor = weighted(
            rng,
            &[(Factor::DuoPush, 70), (Factor::PhoneCall, 8), (Factor::Passcode, 12), (Factor::SmsPasscode, 10)],
        );
        User {
            display_name: format!("{first} {last}"),
            first_name: first,
            upn,
            object_id: Uuid::v4(rng.random()),
            duo_key: duo_key("DU", rng.random()),
            department,
            home,
            work_start,
            work_end,
            volume,
            joined: 0,
            weekend_factor: rng.random_range(0.03..0.25),
            failure_rate: rng.random_range(0.02..0.05),
            noninteractive_rate: rng.random_range(0.1..0.35),
            apps,
            app_cumulative,
            devices,
            primary_share: rng.random_range(0.7..0.92),
            home_ips,
            phone_name: format!("{phone_name} (555-01{:02})", rng.random_range(0..100)),
            factor,
            remembered_rate: rng.random_range(0.05..0.3),
        }
    }

    /// Adds a device and returns its index.
    pub(crate) fn add_device(&mut self, device: Device) -> usize {
        self.devices.push(device);
        self.devices.len() - 1
    }

    /// The replacement of `old` for `user`: a new name and the next OS build, same browser family,
    /// enrolled like the old one.
    pub(crate) fn replacement_device(&self, rng: &mut ChaCha8Rng, user: &User, old: usize) -> Device {
        let previous = &self.devices[old];
        let platform = PLATFORMS[previous.platform].upgrade;
        let mut device = computer_device(rng, user.first_name, platform);
        if PLATFORMS[platform].azure_os == "MacOs" {
            device.name = format!("{}s-MacBook-Air", user.first_name);
        }
        device.managed = previous.managed;
        device.compliant = previous.compliant;
        device.trust_type = previous.trust_type;
        device
    }
}

fn unique_name(rng: &mut ChaCha8Rng, taken: &mut HashSet<String>) -> (&'static str, String) {
    let mut attempt = 0u32;
    loop {
        let first = *FIRST_NAMES.choose(rng).unwrap_or(&"Alex");
        let last = *LAST_NAMES.choose(rng).unwrap_or(&"Doe");
        // After many collisions (large populations) a number tells namesakes apart: `anna.silva7`.
        let last = if attempt < 20 { last.to_string() } else { format!("{last}{}", attempt - 18) };
        if taken.insert(format!("{first} {last}")) {
            return (first, last);
        }
        attempt += 1;
    }
}

fn favourite_apps(rng: &mut ChaCha8Rng, department: usize) -> (Vec<usize>, Vec<f64>) {
    let mut apps = Vec::with_capacity(6);
    if rng.random_bool(0.95) {
        apps.push(APP_EXCHANGE);
    }
    if rng.random_bool(0.85) {
        apps.push(APP_TEAMS);
    }
    let boosted = DEPARTMENTS[department].1;
    let mut pool: Vec<(usize, u32)> = APPS
        .iter()
        .enumerate()
        .filter(|(_, a)| a.popularity > 0)
        .map(|(i, a)| (i, if boosted.contains(&i) { a.popularity + 8 } else { a.popularity }))
        .collect();
    if department == DEPT_IT {
        pool.extend(APPS.iter().enumerate().filter(|(_, a)| a.admin).map(|(i, _)| (i, 6)));
    }
    let target = rng.random_range(2..=6).max(apps.len());
    while apps.len() < target && !pool.is_empty() {
        let pick = weighted(rng, &pool);
        apps.push(pick);
        pool.retain(|&(i, _)| i != pick);
    }
    let mut cumulative = Vec::with_capacity(apps.len());
    let mut total = 0.0;
    for rank in 0..apps.len() {
        // Zipf-like: the first favourites are used most.
        total += 1.0 / (rank as f64 + 1.0).powf(rng.random_range(0.6..1.2));
        cumulative.push(total);
    }
    (apps, cumulative)
}

fn computer_device(rng: &mut ChaCha8Rng, first: &str, platform: usize) -> Device {
    let mac = PLATFORMS[platform].azure_os == "MacOs";
    let name = if mac {
        format!("{first}s-MacBook-Pro")
    } else if rng.random_bool(0.7) {
        format!("LAPTOP-{}", alnum(rng, 5))
    } else {
        format!("DESKTOP-{}", alnum(rng, 7))
    };
    let joined = !mac && rng.random_bool(0.7);
    Device {
        name,
        platform,
        device_id: Some(Uuid::v4(rng.random())),
        managed: joined,
        compliant: joined && rng.random_bool(0.9),
        trust_type: if joined { "Azure AD joined" } else { "Azure AD registered" },
    }
}

fn phone_device(rng: &mut ChaCha8Rng, first: &str, platform: usize) -> Device {
    let name = if platform == P_IOS { format!("{first}s-iPhone") } else { format!("Pixel-8-{}", alnum(rng, 4)) };
    Device {
        name,
        platform,
        device_id: Some(Uuid::v4(rng.random())),
        managed: false,
        compliant: false,
        trust_type: "Azure AD registered",
    }
}

/// A device the directory has never seen (attackers, stolen tokens).
pub(crate) fn unknown_device(rng: &mut ChaCha8Rng, platform: usize, named: bool) -> Device {
    Device {
        name: if named { format!("DESKTOP-{}", alnum(rng, 7)) } else { String::new() },
        platform,
        device_id: None,
        managed: false,
        compliant: false,
        trust_type: "",
    }
}
