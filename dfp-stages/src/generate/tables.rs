//! Fixed reference tables of the synthetic population: cities, applications, client platforms, names.
//!
//! The IP ranges handed out per city are reserved, non-routable blocks that look like public addresses:
//! residential `100.64.0.0/10` (shared address space), office egress and hosting `198.18.0.0/15`
//! (benchmarking), password-spray sources `203.0.113.0/24` and `198.51.100.0/24` (documentation), and IPv6
//! `2001:db8::/32` (documentation). No generated address belongs to anyone.

/// A city: where users live and travel, and where attackers sign in from.
pub(crate) struct City {
    pub(crate) name: &'static str,
    pub(crate) state: &'static str,
    /// ISO 3166 alpha-2 code, as Azure writes `countryOrRegion`.
    pub(crate) country_code: &'static str,
    /// Country name, as Duo writes it.
    pub(crate) country: &'static str,
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
    /// Fixed UTC offset in minutes (daylight saving is not modelled).
    pub(crate) utc_offset_min: i32,
    /// Company offices: users live here.
    pub(crate) office: bool,
}

const fn city(
    name: &'static str,
    state: &'static str,
    (country_code, country): (&'static str, &'static str),
    (latitude, longitude): (f64, f64),
    utc_offset_min: i32,
    office: bool,
) -> City {
    City { name, state, country_code, country, latitude, longitude, utc_offset_min, office }
}

/// Home cities (offices) come first; the others are travel and attack origins. At most 32 entries: the
/// index picks the second octet of the city's address blocks.
pub(crate) const CITIES: [City; 32] = [
    city("Seattle", "Washington", ("US", "United States"), (47.6062, -122.3321), -420, true),
    city("San Francisco", "California", ("US", "United States"), (37.7749, -122.4194), -420, true),
    city("New York", "New York", ("US", "United States"), (40.7128, -74.0060), -240, true),
    city("Austin", "Texas", ("US", "United States"), (30.2672, -97.7431), -300, true),
    city("Chicago", "Illinois", ("US", "United States"), (41.8781, -87.6298), -300, true),
    city("Boston", "Massachusetts", ("US", "United States"), (42.3601, -71.0589), -240, true),
    city("Toronto", "Ontario", ("CA", "Canada"), (43.6532, -79.3832), -240, true),
    city("London", "England", ("GB", "United Kingdom"), (51.5074, -0.1278), 60, true),
    city("Dublin", "Leinster", ("IE", "Ireland"), (53.3498, -6.2603), 60, true),
    city("Berlin", "Berlin", ("DE", "Germany"), (52.5200, 13.4050), 120, true),
    city("Amsterdam", "North Holland", ("NL", "Netherlands"), (52.3676, 4.9041), 120, true),
    city("Bengaluru", "Karnataka", ("IN", "India"), (12.9716, 77.5946), 330, true),
    city("Singapore", "Singapore", ("SG", "Singapore"), (1.3521, 103.8198), 480, true),
    city("Sydney", "New South Wales", ("AU", "Australia"), (-33.8688, 151.2093), 600, true),
    city("Tokyo", "Tokyo", ("JP", "Japan"), (35.6762, 139.6503), 540, true),
    city("Los Angeles", "California", ("US", "United States"), (34.0522, -118.2437), -420, false),
    city("Denver", "Colorado", ("US", "United States"), (39.7392, -104.9903), -360, false),
    city("Atlanta", "Georgia", ("US", "United States"), (33.7490, -84.3880), -240, false),
    city("Vancouver", "British Columbia", ("CA", "Canada"), (49.2827, -123.1207), -420, false),
    city("Manchester", "England", ("GB", "United Kingdom"), (53.4808, -2.2426), 60, false),
    city("Munich", "Bavaria", ("DE", "Germany"), (48.1351, 11.5820), 120, false),
    city("Paris", "Ile-de-France", ("FR", "France"), (48.8566, 2.3522), 120, false),
    city("Madrid", "Madrid", ("ES", "Spain"), (40.4168, -3.7038), 120, false),
    city("Hyderabad", "Telangana", ("IN", "India"), (17.3850, 78.4867), 330, false),
    city("Melbourne", "Victoria", ("AU", "Australia"), (-37.8136, 144.9631), 600, false),
    city("Sao Paulo", "Sao Paulo", ("BR", "Brazil"), (-23.5505, -46.6333), -180, false),
    city("Lagos", "Lagos", ("NG", "Nigeria"), (6.5244, 3.3792), 60, false),
    city("Moscow", "Moscow", ("RU", "Russia"), (55.7558, 37.6173), 180, false),
    city("Bucharest", "Bucharest", ("RO", "Romania"), (44.4268, 26.1025), 180, false),
    city("Ho Chi Minh City", "Ho Chi Minh", ("VN", "Vietnam"), (10.8231, 106.6297), 420, false),
    city("Johannesburg", "Gauteng", ("ZA", "South Africa"), (-26.2041, 28.0473), 120, false),
    city("Dubai", "Dubai", ("AE", "United Arab Emirates"), (25.2048, 55.2708), 240, false),
];

/// Cities attackers sign in from (indices into [`CITIES`]).
pub(crate) const ATTACK_CITIES: [usize; 7] = [25, 26, 27, 28, 29, 30, 31];

/// Great-circle distance in kilometres.
pub(crate) fn distance_km(a: &City, b: &City) -> f64 {
    let (la1, lo1) = (a.latitude.to_radians(), a.longitude.to_radians());
    let (la2, lo2) = (b.latitude.to_radians(), b.longitude.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// An application users sign in to.
pub(crate) struct App {
    pub(crate) name: &'static str,
    /// How likely a user is to have it among their favourites (relative).
    pub(crate) popularity: u32,
    /// Administration portals: rarely used, mostly by IT.
    pub(crate) admin: bool,
}

const fn app(name: &'static str, popularity: u32, admin: bool) -> App {
    App { name, popularity, admin }
}

/// Index of Office 365 Exchange Online in [`APPS`].
pub(crate) const APP_EXCHANGE: usize = 0;
/// Index of Microsoft Teams in [`APPS`].
pub(crate) const APP_TEAMS: usize = 1;
/// Index of the app rolled out to everyone during the inference period; nobody uses it before.
pub(crate) const APP_ROLLOUT: usize = APPS.len() - 1;

/// Applications. `popularity` weighs the draw of a user's extra favourites; Exchange Online and Teams are
/// given to (nearly) everyone separately, and the admin portals and the rollout app are never drawn.
pub(crate) const APPS: [App; 27] = [
    app("Office 365 Exchange Online", 0, false),
    app("Microsoft Teams", 0, false),
    app("SharePoint Online", 9, false),
    app("OneDrive for Business", 7, false),
    app("Microsoft Office 365 Portal", 5, false),
    app("Microsoft Planner", 2, false),
    app("Power BI Service", 3, false),
    app("Salesforce", 4, false),
    app("Workday", 4, false),
    app("ServiceNow", 3, false),
    app("GitHub", 3, false),
    app("Atlassian Jira", 3, false),
    app("Confluence", 2, false),
    app("Zoom", 4, false),
    app("Slack", 3, false),
    app("Box", 2, false),
    app("DocuSign", 2, false),
    app("SAP Concur", 2, false),
    app("Adobe Creative Cloud", 1, false),
    app("Tableau", 1, false),
    app("Cisco AnyConnect VPN", 5, false),
    app("Azure DevOps", 2, false),
    app("Azure Portal", 0, true),
    app("Microsoft Entra admin center", 0, true),
    app("Exchange Admin Center", 0, true),
    app("Microsoft Intune admin center", 0, true),
    app("Microsoft 365 Copilot", 0, false),
];

/// Departments: Duo group name and the apps its people favour (indices into [`APPS`]).
pub(crate) const DEPARTMENTS: [(&str, &[usize]); 6] = [
    ("Staff", &[2, 3, 4, 8]),
    ("Engineering", &[10, 11, 12, 21, 14]),
    ("Sales", &[7, 13, 16, 6]),
    ("Finance", &[17, 8, 6, 19]),
    ("Marketing", &[18, 15, 13, 2]),
    ("IT", &[9, 20, 11]),
];

/// Index of the IT department in [`DEPARTMENTS`]: its people also use the admin portals.
pub(crate) const DEPT_IT: usize = 5;

/// An operating system and browser combination, in the vocabularies of both log formats.
pub(crate) struct Platform {
    pub(crate) azure_os: &'static str,
    pub(crate) azure_browser: &'static str,
    pub(crate) duo_os: &'static str,
    pub(crate) duo_os_version: &'static str,
    pub(crate) duo_browser: &'static str,
    pub(crate) duo_browser_version: &'static str,
    pub(crate) user_agent: &'static str,
    pub(crate) mobile: bool,
    /// The platform of a replacement device (a newer OS build, same browser family).
    pub(crate) upgrade: usize,
}

#[allow(clippy::too_many_arguments)]
const fn platform(
    azure_os: &'static str,
    azure_browser: &'static str,
    duo_os: &'static str,
    duo_os_version: &'static str,
    duo_browser: &'static str,
    duo_browser_version: &'static str,
    user_agent: &'static str,
    mobile: bool,
    upgrade: usize,
) -> Platform {
    Platform {
        azure_os,
        azure_browser,
        duo_os,
        duo_os_version,
        duo_browser,
        duo_browser_version,
        user_agent,
        mobile,
        upgrade,
    }
}

pub(crate) const P_WIN10_EDGE: usize = 0;
pub(crate) const P_WIN10_CHROME: usize = 1;
pub(crate) const P_WIN11_EDGE: usize = 2;
pub(crate) const P_WIN11_CHROME: usize = 3;
pub(crate) const P_MAC_SAFARI: usize = 4;
pub(crate) const P_MAC_CHROME: usize = 5;
pub(crate) const P_IOS: usize = 8;
pub(crate) const P_ANDROID: usize = 9;
pub(crate) const P_LINUX_FIREFOX: usize = 10;
pub(crate) const P_WIN_FIREFOX: usize = 11;
pub(crate) const P_MAC_FIREFOX: usize = 12;
pub(crate) const P_SCRIPT: usize = 13;

/// Platforms. Users get 0–9; 10–13 are attacker-only.
pub(crate) const PLATFORMS: [Platform; 14] = [
    platform(
        "Windows 10",
        "Edge 120.0.0",
        "Windows",
        "10",
        "Edge Chromium",
        "120.0.2210.91",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
        false,
        P_WIN11_EDGE,
    ),
    platform(
        "Windows 10",
        "Chrome 119.0.0",
        "Windows",
        "10",
        "Chrome",
        "119.0.6045.199",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
        false,
        P_WIN11_CHROME,
    ),
    platform(
        "Windows 11",
        "Edge 121.0.0",
        "Windows",
        "11",
        "Edge Chromium",
        "121.0.2277.83",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36 Edg/121.0.0.0",
        false,
        P_WIN11_EDGE,
    ),
    platform(
        "Windows 11",
        "Chrome 120.0.0",
        "Windows",
        "11",
        "Chrome",
        "120.0.6099.130",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        false,
        P_WIN11_CHROME,
    ),
    platform(
        "MacOs",
        "Safari 17.1",
        "Mac OS X",
        "14.1",
        "Safari",
        "17.1",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        false,
        6,
    ),
    platform(
        "MacOs",
        "Chrome 119.0.0",
        "Mac OS X",
        "13.6",
        "Chrome",
        "119.0.6045.199",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
        false,
        7,
    ),
    platform(
        "MacOs",
        "Safari 17.2",
        "Mac OS X",
        "14.2",
        "Safari",
        "17.2",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
        false,
        6,
    ),
    platform(
        "MacOs",
        "Chrome 120.0.0",
        "Mac OS X",
        "14.2",
        "Chrome",
        "120.0.6099.129",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        false,
        7,
    ),
    platform(
        "iOS 17",
        "Mobile Safari 17.1",
        "iOS",
        "17.1.2",
        "Mobile Safari",
        "17.1",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        true,
        P_IOS,
    ),
    platform(
        "Android 14",
        "Chrome Mobile 119.0.6045",
        "Android",
        "14",
        "Chrome Mobile",
        "119.0.6045.163",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Mobile Safari/537.36",
        true,
        P_ANDROID,
    ),
    platform(
        "Linux",
        "Firefox 121.0",
        "Linux",
        "",
        "Firefox",
        "121.0",
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        false,
        P_LINUX_FIREFOX,
    ),
    platform(
        "Windows 10",
        "Firefox 120.0",
        "Windows",
        "10",
        "Firefox",
        "120.0.1",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Gecko/20100101 Firefox/120.0",
        false,
        P_WIN_FIREFOX,
    ),
    platform(
        "MacOs",
        "Firefox 120.0",
        "Mac OS X",
        "14.1",
        "Firefox",
        "120.0.1",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:120.0) Gecko/20100101 Firefox/120.0",
        false,
        P_MAC_FIREFOX,
    ),
    platform(
        "Linux",
        "Python Requests 2.31",
        "Linux",
        "",
        "Python Requests",
        "2.31.0",
        "python-requests/2.31.0",
        false,
        P_SCRIPT,
    ),
];

/// Computer platforms a user's main device is drawn from, with relative weights.
pub(crate) const COMPUTER_PLATFORMS: [(usize, u32); 6] = [
    (P_WIN10_EDGE, 30),
    (P_WIN10_CHROME, 20),
    (P_WIN11_EDGE, 15),
    (P_WIN11_CHROME, 10),
    (P_MAC_SAFARI, 15),
    (P_MAC_CHROME, 10),
];

/// First names of users.
pub(crate) const FIRST_NAMES: [&str; 48] = [
    "Alice", "Bob", "Carol", "David", "Emma", "Farid", "Grace", "Hiro", "Isabel", "James", "Kavya", "Liam", "Maria",
    "Noah", "Olivia", "Pedro", "Quinn", "Rahul", "Sofia", "Tom", "Uma", "Victor", "Wei", "Ximena", "Yusuf", "Zoe",
    "Aisha", "Ben", "Chloe", "Daniel", "Elena", "Felix", "Hannah", "Ivan", "Julia", "Kenji", "Laura", "Mateo", "Nina",
    "Oscar", "Priya", "Ryan", "Sara", "Tariq", "Lena", "Marco", "Anna", "Jonas",
];

/// Last names of users.
pub(crate) const LAST_NAMES: [&str; 40] = [
    "Smith",
    "Johnson",
    "Garcia",
    "Chen",
    "Mueller",
    "Okafor",
    "Patel",
    "Kim",
    "Nguyen",
    "Rossi",
    "Silva",
    "Cohen",
    "Tanaka",
    "Dubois",
    "Novak",
    "Larsen",
    "Murphy",
    "Kowalski",
    "Haddad",
    "Fischer",
    "Jones",
    "Brown",
    "Wilson",
    "Taylor",
    "Martin",
    "Lopez",
    "Sato",
    "Singh",
    "Ivanova",
    "Berg",
    "Costa",
    "Walsh",
    "Moreau",
    "Schmidt",
    "Ali",
    "Yamamoto",
    "Reyes",
    "Hughes",
    "Lindqvist",
    "Romano",
];

/// The tenant's mail domain.
pub(crate) const DOMAIN: &str = "contoso.com";
