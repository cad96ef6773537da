//! The story told by a generated data set: every user's ordinary sign-ins day by day, the benign changes
//! (business trips, a replaced laptop, an app rolled out to everyone) and the attacks injected into the
//! inference period. The result is a list of format-neutral [`Event`]s that `azure` and `duo` render.

use std::net::{IpAddr, Ipv4Addr};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::format::{Uuid, TICKS_PER_SEC};
use super::population::{
    hosting_ip, mobile_ip, office_ip, residential_ip, unknown_device, weighted, Factor, Population,
};
use super::tables::{
    distance_km, APPS, APP_EXCHANGE, APP_ROLLOUT, ATTACK_CITIES, CITIES, PLATFORMS, P_LINUX_FIREFOX, P_MAC_FIREFOX,
    P_SCRIPT, P_WIN10_CHROME, P_WIN_FIREFOX,
};
use super::Kind;

const DAY_SECS: i64 = 86_400;
const DAY: i64 = DAY_SECS * TICKS_PER_SEC;
const MINUTE: i64 = 60 * TICKS_PER_SEC;

/// Why a sign-in failed; each format words it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    InvalidCredentials,
    UserCancelled,
    NoResponse,
    Unenrolled,
    Locked,
}

/// How the client signed in (Azure `clientAppUsed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Client {
    Browser,
    MobileDesktop,
    ActiveSync,
}

impl Client {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Client::Browser => "Browser",
            Client::MobileDesktop => "Mobile Apps and Desktop clients",
            Client::ActiveSync => "Exchange ActiveSync",
        }
    }
}

/// One sign-in, independent of the log format.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// 100 ns ticks since the Unix epoch, UTC.
    pub(crate) ticks: i64,
    /// Azure `properties.id`, Duo `txid`.
    pub(crate) id: Uuid,
    pub(crate) correlation: Uuid,
    pub(crate) user: u32,
    /// Index into [`APPS`].
    pub(crate) app: u16,
    /// Where the access device is (index into [`CITIES`]).
    pub(crate) city: u16,
    /// Index into [`Population::devices`].
    pub(crate) device: u32,
    pub(crate) ip: IpAddr,
    pub(crate) failure: Option<Failure>,
    pub(crate) interactive: bool,
    pub(crate) client: Client,
    pub(crate) factor: Factor,
    pub(crate) kind: Kind,
    /// Duo: an enrollment record rather than an authentication (not labelled).
    pub(crate) enrollment: bool,
    /// Duo: browser, OS and location fields are null.
    pub(crate) sparse: bool,
    /// Duo: where the second-factor device (the user's phone) is.
    pub(crate) auth_city: u16,
    pub(crate) auth_ip: IpAddr,
}

/// The time frame of a data set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeline {
    /// First instant, in ticks.
    pub(crate) start: i64,
    pub(crate) days: u32,
    pub(crate) train_days: u32,
}

impl Timeline {
    pub(crate) fn end(&self) -> i64 {
        self.start + i64::from(self.days) * DAY
    }

    /// First instant of the inference period.
    pub(crate) fn infer_start(&self) -> i64 {
        self.start + i64::from(self.train_days) * DAY
    }

    fn day_start(&self, day: u32) -> i64 {
        self.start + i64::from(day) * DAY
    }

    /// The instant in day `day` (a 24-hour span from `start`) at which clocks at UTC offset
    /// `offset_min` read `local_secs` after midnight.
    fn at(&self, day: u32, local_secs: i64, offset_min: i32) -> i64 {
        let start_sod = self.start.div_euclid(TICKS_PER_SEC).rem_euclid(DAY_SECS);
        let into_day = (local_secs - i64::from(offset_min) * 60 - start_sod).rem_euclid(DAY_SECS);
        self.day_start(day) + into_day * TICKS_PER_SEC
    }

    /// Monday to Friday (by the UTC date of the day's start).
    fn is_weekday(&self, day: u32) -> bool {
        let epoch_day = self.day_start(day).div_euclid(DAY);
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        (epoch_day + 3).rem_euclid(7) < 5
    }

    /// Like [`Timeline::at`], moved so that `[t, t + span)` lies inside the data set.
    fn place(&self, day: u32, local_secs: i64, offset_min: i32, span: i64) -> i64 {
        let mut t = self.at(day, local_secs, offset_min);
        if t + span >= self.end() {
            t = if day > self.train_days {
                t - DAY
            } else {
                (self.end() - span - TICKS_PER_SEC).max(self.day_start(day))
            };
        }
        t
    }
}

/// A generated data set, before rendering.
pub(crate) struct Dataset {
    pub(crate) population: Population,
    pub(crate) timeline: Timeline,
    /// Sorted by time (then id).
    pub(crate) events: Vec<Event>,
    /// How many users each kind of change or attack was applied to (indexed like [`Kind::ALL`]).
    pub(crate) instances: [u32; Kind::ALL.len()],
}

/// A per-user change during some days of the inference period.
struct Trip {
    user: usize,
    first: u32,
    last: u32,
    city: usize,
    hotel_ip: IpAddr,
}

struct NewLaptop {
    user: usize,
    day: u32,
    old: usize,
    new: usize,
}

/// Who is hit by what, and when.
struct Plan {
    attacks: Vec<(Kind, usize, u32)>,
    trips: Vec<Trip>,
    laptops: Vec<NewLaptop>,
    rollout_day: u32,
}

/// Random streams: one per purpose so that, for a seed, the population does not depend on the time frame
/// and one user's days do not depend on another's.
const STREAM_POPULATION: u64 = 0;
const STREAM_PLAN: u64 = 1;
const STREAM_ATTACKS: u64 = 2;
const STREAM_SPREAD: u64 = 3;
const STREAM_USERS: u64 = 1 << 32;

fn stream(seed: u64, n: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(n);
    rng
}

/// How users' amounts of history spread: shares of light users and of new joiners (both 0 by default,
/// which leaves every other choice of a seed as it was).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Spread {
    /// Share of users who sign in a tenth as often as usual (0.5 to 8 times a working day).
    pub(crate) light: f64,
    /// Share of users who join during the second half of the training period.
    pub(crate) joiners: f64,
}

/// Builds the data set for `users` users over `timeline`.
pub(crate) fn build(seed: u64, users: usize, timeline: Timeline, spread: Spread) -> Dataset {
    let mut population = Population::build(users, &mut stream(seed, STREAM_POPULATION));
    if spread != Spread::default() {
        let mut rng = stream(seed, STREAM_SPREAD);
        let joining = (timeline.train_days / 2).max(1)..timeline.train_days.max(2);
        for u in &mut population.users {
            if rng.random_bool(spread.light) {
                u.volume /= 10.0;
            }
            if rng.random_bool(spread.joiners) {
                u.joined = rng.random_range(joining.clone());
            }
        }
    }
    let plan = make_plan(&mut stream(seed, STREAM_PLAN), &mut population, timeline);
    let mut builder = Builder { population, timeline, events: Vec::new() };
    for user in 0..users {
        builder.ordinary_days(&mut stream(seed, STREAM_USERS + user as u64), user, &plan);
    }
    let mut rng = stream(seed, STREAM_ATTACKS);
    let spray = SprayCampaign::new(&mut rng);
    for &(kind, user, day) in &plan.attacks {
        match kind {
            Kind::AccountTakeover => builder.account_takeover(&mut rng, user, day),
            Kind::QuietTakeover => builder.quiet_takeover(&mut rng, user, day),
            Kind::PasswordSpray => builder.password_spray(&mut rng, &spray, user, day),
            Kind::TokenTheft => builder.token_theft(&mut rng, user, day),
            Kind::ImpossibleTravel => builder.impossible_travel(&mut rng, user, day),
            _ => {}
        }
    }
    let mut instances = [0u32; Kind::ALL.len()];
    for &(kind, _, _) in &plan.attacks {
        instances[kind.index()] += 1;
    }
    instances[Kind::BusinessTrip.index()] = plan.trips.len() as u32;
    instances[Kind::ReplacedLaptop.index()] = plan.laptops.len() as u32;
    instances[Kind::NewAppRollout.index()] = 1;
    let Builder { population, mut events, .. } = builder;
    events.sort_unstable_by_key(|e| (e.ticks, e.id));
    instances[Kind::Normal.index()] = population.users.len() as u32;
    Dataset { population, timeline, events, instances }
}

fn make_plan(rng: &mut ChaCha8Rng, population: &mut Population, timeline: Timeline) -> Plan {
    let users = population.users.len();
    let mut order: Vec<usize> = (0..users).collect();
    order.shuffle(rng);
    let per_attack = (users / 15).clamp(1, 5);
    let per_benign = (users / 20).clamp(1, 5);
    let infer_days = timeline.train_days..timeline.days;
    let mut next = order.iter().copied().cycle();
    let mut attacks = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.is_attack()) {
        for _ in 0..per_attack {
            let user = next.next().unwrap_or(0);
            attacks.push((kind, user, rng.random_range(infer_days.clone())));
        }
    }
    let mut trips = Vec::new();
    for _ in 0..per_benign {
        let user = next.next().unwrap_or(0);
        let home = population.users[user].home;
        let away: Vec<usize> = (0..CITIES.len()).filter(|&c| c != home && CITIES[c].office).collect();
        let city = *away.choose(rng).unwrap_or(&home);
        let first = rng.random_range(infer_days.clone());
        let last = (first + rng.random_range(1..4)).min(timeline.days - 1);
        trips.push(Trip { user, first, last, city, hotel_ip: residential_ip(rng, city) });
    }
    let mut laptops = Vec::new();
    for _ in 0..per_benign {
        let user = next.next().unwrap_or(0);
        let old = population.users[user].devices[0];
        let device = population.replacement_device(rng, &population.users[user], old);
        let new = population.add_device(device);
        laptops.push(NewLaptop { user, day: rng.random_range(infer_days.clone()), old, new });
    }
    // Roll the new app out on a working day if the inference period has one.
    let weekdays: Vec<u32> = infer_days.clone().filter(|&d| timeline.is_weekday(d)).collect();
    let rollout_day = weekdays.choose(rng).copied().unwrap_or(timeline.train_days);
    Plan { attacks, trips, laptops, rollout_day }
}

/// Shared infrastructure of the password-spray campaign: the same few addresses hit every victim.
struct SprayCampaign {
    sources: Vec<(IpAddr, usize)>,
}

impl SprayCampaign {
    fn new(rng: &mut ChaCha8Rng) -> SprayCampaign {
        let sources = (0..3)
            .map(|i| {
                let ip = if i % 2 == 0 {
                    Ipv4Addr::new(203, 0, 113, rng.random_range(2..=254))
                } else {
                    Ipv4Addr::new(198, 51, 100, rng.random_range(2..=254))
                };
                (IpAddr::V4(ip), *ATTACK_CITIES.choose(rng).unwrap_or(&ATTACK_CITIES[0]))
            })
            .collect();
        SprayCampaign { sources }
    }
}

struct Builder {
    population: Population,
    timeline: Timeline,
    events: Vec<Event>,
}

impl Builder {
    /// A successful interactive browser sign-in with the user's usual factor; callers adjust the rest.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        rng: &mut ChaCha8Rng,
        ticks: i64,
        user: usize,
        app: usize,
        city: usize,
        device: usize,
        ip: IpAddr,
        kind: Kind,
    ) -> Event {
        let u = &self.population.users[user];
        let mobile = PLATFORMS[self.population.devices[device].platform].mobile;
        Event {
            ticks,
            id: Uuid::v4(rng.random()),
            correlation: Uuid::v4(rng.random()),
            user: user as u32,
            app: app as u16,
            city: city as u16,
            device: device as u32,
            ip,
            failure: None,
            interactive: true,
            client: if mobile { Client::MobileDesktop } else { Client::Browser },
            factor: u.factor,
            kind,
            enrollment: false,
            sparse: false,
            auth_city: u.home as u16,
            auth_ip: mobile_ip(rng, u.home),
        }
    }

    /// An ordinary failure and the factor that goes with it.
    fn ordinary_failure(rng: &mut ChaCha8Rng) -> (Failure, Factor) {
        match weighted(rng, &[(0, 78), (1, 10), (2, 10), (3, 2)]) {
            0 => (Failure::InvalidCredentials, Factor::Passcode),
            1 => (Failure::UserCancelled, Factor::DuoPush),
            2 => (Failure::NoResponse, Factor::DuoPush),
            _ => (Failure::Locked, Factor::NotAvailable),
        }
    }

    /// The user's sign-ins of every day, with the benign changes of the plan applied.
    fn ordinary_days(&mut self, rng: &mut ChaCha8Rng, user: usize, plan: &Plan) {
        let mut rollout_seen = false;
        let joined = self.population.users[user].joined;
        for day in joined..self.timeline.days {
            let trip = plan.trips.iter().find(|t| t.user == user && (t.first..=t.last).contains(&day));
            let laptop = plan.laptops.iter().find(|l| l.user == user && day >= l.day);
            let new_laptop_day = plan.laptops.iter().any(|l| l.user == user && l.day == day);
            let must_sign_in = trip.is_some()
                || new_laptop_day
                || plan.attacks.iter().any(|&(k, u, d)| k == Kind::ImpossibleTravel && u == user && d == day)
                || day == plan.rollout_day;
            let u = &self.population.users[user];
            let weekday = self.timeline.is_weekday(day);
            let mut n = if weekday {
                if rng.random_bool(0.03) {
                    0.0
                } else {
                    (u.volume * rng.random_range(0.6..1.4)).round()
                }
            } else {
                (u.volume * u.weekend_factor * rng.random_range(0.5..1.5)).round()
            } as usize;
            if must_sign_in {
                n = n.max(2);
            }
            let city = trip.map_or(u.home, |t| t.city);
            let offset = CITIES[city].utc_offset_min;
            let mut emitted = 0;
            while emitted < n {
                let u = &self.population.users[user];
                let session = rng.random_range(1..=4).min(n - emitted);
                emitted += session;
                let local = session_start(rng, u.work_start, u.work_end, weekday);
                // The first sign-in of a day that must have one is a success, on the new laptop if that is
                // what the day is about.
                let first_of_day = emitted == session;
                let mut device =
                    if u.devices.len() == 1 || rng.random_bool(u.primary_share) || (first_of_day && new_laptop_day) {
                        u.devices[0]
                    } else {
                        u.devices[1]
                    };
                if let Some(l) = laptop.filter(|l| l.old == device) {
                    device = l.new;
                }
                let mobile = PLATFORMS[self.population.devices[device].platform].mobile;
                let in_hours = (i64::from(u.work_start)..i64::from(u.work_end)).contains(&local);
                let ip = if mobile {
                    mobile_ip(rng, city)
                } else if let Some(t) = trip {
                    if CITIES[t.city].office && rng.random_bool(0.4) {
                        office_ip(rng, t.city)
                    } else {
                        t.hotel_ip
                    }
                } else if weekday && in_hours && rng.random_bool(0.6) {
                    office_ip(rng, city)
                } else {
                    *u.home_ips.choose(rng).unwrap_or(&u.home_ips[0])
                };
                let auth_ip = mobile_ip(rng, city);
                let mut t = self.timeline.at(day, local, offset) + rng.random_range(0..TICKS_PER_SEC);
                for j in 0..session {
                    if j > 0 {
                        t += rng.random_range(5 * TICKS_PER_SEC..10 * MINUTE);
                    }
                    if t >= self.timeline.end() {
                        break;
                    }
                    let u = &self.population.users[user];
                    let mut app = u.pick_app(rng);
                    if day >= plan.rollout_day && (!rollout_seen || rng.random_bool(0.1)) {
                        app = APP_ROLLOUT;
                        rollout_seen = true;
                    }
                    let kind = if trip.is_some() {
                        Kind::BusinessTrip
                    } else if laptop.is_some_and(|l| l.new == device) {
                        Kind::ReplacedLaptop
                    } else if app == APP_ROLLOUT {
                        Kind::NewAppRollout
                    } else {
                        Kind::Normal
                    };
                    let interactive = !rng.random_bool(u.noninteractive_rate);
                    let (failure_rate, remembered_rate, factor) = (u.failure_rate, u.remembered_rate, u.factor);
                    let mut e = self.event(rng, t, user, app, city, device, ip, kind);
                    e.interactive = interactive;
                    e.auth_city = city as u16;
                    e.auth_ip = auth_ip;
                    if !mobile {
                        e.client = if !interactive || rng.random_bool(0.2) {
                            Client::MobileDesktop
                        } else if app == APP_EXCHANGE && rng.random_bool(0.03) {
                            Client::ActiveSync
                        } else {
                            Client::Browser
                        };
                    }
                    if rng.random_bool(failure_rate) && !(must_sign_in && first_of_day && j == 0) {
                        let (failure, f) = Self::ordinary_failure(rng);
                        e.failure = Some(failure);
                        e.factor = f;
                    } else if rng.random_bool(remembered_rate) {
                        e.factor = Factor::RememberedDevice;
                    } else {
                        e.factor = factor;
                    }
                    e.enrollment = e.kind == Kind::Normal && rng.random_bool(0.01);
                    e.sparse = e.kind == Kind::Normal && !e.enrollment && rng.random_bool(0.005);
                    self.events.push(e);
                }
            }
        }
    }

    fn foreign_attack_city(&self, rng: &mut ChaCha8Rng, user: usize) -> usize {
        let home = CITIES[self.population.users[user].home].country_code;
        let choices: Vec<usize> = ATTACK_CITIES.iter().copied().filter(|&c| CITIES[c].country_code != home).collect();
        *choices.choose(rng).unwrap_or(&ATTACK_CITIES[0])
    }

    /// Blatant: a new country, address, OS and browser, and a burst over dozens of apps the user never
    /// opens.
    fn account_takeover(&mut self, rng: &mut ChaCha8Rng, user: usize, day: u32) {
        let city = self.foreign_attack_city(rng, user);
        let ip = hosting_ip(rng);
        let device = self.population.add_device(unknown_device(rng, P_LINUX_FIREFOX, false));
        let favourites = &self.population.users[user].apps;
        let mut apps: Vec<usize> = (0..APPS.len()).filter(|a| !favourites.contains(a) && *a != APP_ROLLOUT).collect();
        apps.shuffle(rng);
        let n = rng.random_range(25..=40);
        let span = rng.random_range(15..45) * MINUTE;
        let t0 = self.timeline.place(day, rng.random_range(0..DAY_SECS), CITIES[city].utc_offset_min, span);
        let step = span / n;
        for i in 0..n {
            let t = t0 + i * step + rng.random_range(0..step);
            let mut e =
                self.event(rng, t, user, apps[i as usize % apps.len()], city, device, ip, Kind::AccountTakeover);
            e.factor = Factor::DuoPush;
            if i < 2 && rng.random_bool(0.5) {
                e.failure = Some(Failure::InvalidCredentials);
                e.factor = Factor::Passcode;
            }
            self.events.push(e);
        }
    }

    /// Subtle: a new country and browser, but the usual apps at the usual volume.
    fn quiet_takeover(&mut self, rng: &mut ChaCha8Rng, user: usize, day: u32) {
        let city = self.foreign_attack_city(rng, user);
        let ip = residential_ip(rng, city);
        let u = &self.population.users[user];
        let mac = PLATFORMS[self.population.devices[u.devices[0]].platform].azure_os == "MacOs";
        let device =
            self.population.add_device(unknown_device(rng, if mac { P_MAC_FIREFOX } else { P_WIN_FIREFOX }, false));
        let u = &self.population.users[user];
        let n = ((u.volume * rng.random_range(0.5..1.0)).round() as usize).max(3);
        let (failure_rate, noninteractive) = (u.failure_rate, u.noninteractive_rate);
        let offset = CITIES[city].utc_offset_min;
        let mut emitted = 0;
        while emitted < n {
            let session = rng.random_range(1..=4).min(n - emitted);
            emitted += session;
            let mut t = self.timeline.place(day, rng.random_range(9 * 3600..18 * 3600), offset, 40 * MINUTE);
            for _ in 0..session {
                t += rng.random_range(5 * TICKS_PER_SEC..10 * MINUTE);
                let app = self.population.users[user].pick_app(rng);
                let mut e = self.event(rng, t, user, app, city, device, ip, Kind::QuietTakeover);
                e.interactive = !rng.random_bool(noninteractive);
                if rng.random_bool(failure_rate) {
                    e.failure = Some(Failure::InvalidCredentials);
                    e.factor = Factor::Passcode;
                }
                self.events.push(e);
            }
        }
    }

    /// Bursts of failed passwords from the campaign's addresses, then a success from a new address.
    fn password_spray(&mut self, rng: &mut ChaCha8Rng, spray: &SprayCampaign, user: usize, day: u32) {
        let script = self.population.add_device(unknown_device(rng, P_SCRIPT, false));
        let mut t = self.timeline.place(day, rng.random_range(0..DAY_SECS), 0, 5 * 60 * MINUTE);
        let bursts = rng.random_range(2..=3);
        for b in 0..bursts {
            if b > 0 {
                t += rng.random_range(20 * MINUTE..70 * MINUTE);
            }
            let (ip, city) = spray.sources[b % spray.sources.len()];
            for _ in 0..rng.random_range(3..=8) {
                t += rng.random_range(3 * TICKS_PER_SEC..40 * TICKS_PER_SEC);
                let mut e = self.event(rng, t, user, APP_EXCHANGE, city, script, ip, Kind::PasswordSpray);
                e.client = Client::MobileDesktop;
                let (failure, factor) = match weighted(rng, &[(0, 70), (1, 15), (2, 15)]) {
                    0 => (Failure::InvalidCredentials, Factor::Passcode),
                    1 => (Failure::NoResponse, Factor::DuoPush),
                    _ => (Failure::Unenrolled, Factor::NotAvailable),
                };
                e.failure = Some(failure);
                e.factor = factor;
                self.events.push(e);
            }
        }
        let city = self.foreign_attack_city(rng, user);
        let ip = hosting_ip(rng);
        let device = self.population.add_device(unknown_device(rng, P_LINUX_FIREFOX, false));
        t += rng.random_range(10 * MINUTE..60 * MINUTE);
        for _ in 0..rng.random_range(1..=2) {
            t += rng.random_range(5 * TICKS_PER_SEC..3 * MINUTE);
            let mut e = self.event(rng, t, user, APP_EXCHANGE, city, device, ip, Kind::PasswordSpray);
            e.factor = Factor::DuoPush;
            self.events.push(e);
        }
    }

    /// A replayed token: an unknown device in the user's country using admin portals at night.
    fn token_theft(&mut self, rng: &mut ChaCha8Rng, user: usize, day: u32) {
        let home = self.population.users[user].home;
        let same_country: Vec<usize> =
            (0..CITIES.len()).filter(|&c| c != home && CITIES[c].country_code == CITIES[home].country_code).collect();
        let city = *same_country.choose(rng).unwrap_or(&home);
        let ip = hosting_ip(rng);
        let device = self.population.add_device(unknown_device(rng, P_WIN10_CHROME, true));
        let admin: Vec<usize> = (0..APPS.len()).filter(|&a| APPS[a].admin).collect();
        let n = rng.random_range(6..=14);
        let span = rng.random_range(20..90) * MINUTE;
        let t0 = self.timeline.place(day, rng.random_range(1800..4 * 3600), CITIES[home].utc_offset_min, span);
        let step = span / n;
        for i in 0..n {
            let t = t0 + i * step + rng.random_range(0..step);
            let app = if rng.random_bool(0.85) { *admin.choose(rng).unwrap_or(&APP_EXCHANGE) } else { APP_EXCHANGE };
            let mut e = self.event(rng, t, user, app, city, device, ip, Kind::TokenTheft);
            e.interactive = rng.random_bool(0.3);
            e.client = Client::MobileDesktop;
            e.factor = Factor::RememberedDevice;
            self.events.push(e);
        }
    }

    /// A sign-in from a far city within the hour of one of the user's ordinary sign-ins.
    fn impossible_travel(&mut self, rng: &mut ChaCha8Rng, user: usize, day: u32) {
        let (from, to) = (self.timeline.start + i64::from(day) * DAY, self.timeline.start + i64::from(day + 1) * DAY);
        let anchors: Vec<(i64, u32)> = self
            .events
            .iter()
            .filter(|e| {
                e.user as usize == user && (from..to).contains(&e.ticks) && e.failure.is_none() && !e.kind.is_attack()
            })
            .map(|e| (e.ticks, e.device))
            .collect();
        let Some(&(anchor, device)) = anchors.choose(rng) else {
            return;
        };
        let home = &CITIES[self.population.users[user].home];
        let far: Vec<usize> = (0..CITIES.len()).filter(|&c| distance_km(home, &CITIES[c]) > 5000.0).collect();
        let city = *far.choose(rng).unwrap_or(&ATTACK_CITIES[0]);
        let ip = residential_ip(rng, city);
        let after = anchor + 55 * MINUTE < self.timeline.end();
        let mut t = if after { anchor } else { anchor - 55 * MINUTE };
        t += rng.random_range(5 * MINUTE..25 * MINUTE);
        for _ in 0..rng.random_range(1..=3) {
            t += rng.random_range(TICKS_PER_SEC..10 * MINUTE);
            let app = self.population.users[user].pick_app(rng);
            let mut e = self.event(rng, t, user, app, city, device as usize, ip, Kind::ImpossibleTravel);
            e.client = Client::Browser;
            self.events.push(e);
        }
    }
}

/// Local start of a session, in seconds after midnight: mostly working hours, some evening, a little
/// at any hour.
fn session_start(rng: &mut ChaCha8Rng, work_start: u32, work_end: u32, weekday: bool) -> i64 {
    let (start, end) = (i64::from(work_start), i64::from(work_end));
    if !weekday {
        return rng.random_range(9 * 3600..22 * 3600);
    }
    let r: f64 = rng.random();
    if r < 0.82 {
        rng.random_range(start..end)
    } else if r < 0.97 {
        rng.random_range(end..(23 * 3600 + 1800).max(end + 1))
    } else {
        rng.random_range(0..DAY_SECS)
    }
}
