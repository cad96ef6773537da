//! The built-in log families, Azure AD and Duo: each declared once, in YAML, in the format of a
//! pipeline's `families:` block (see `dfp_core::family`). `dfp families show azure` prints one.

dfp_core::register_family!(include_str!("azure.yaml"));
dfp_core::register_family!(include_str!("duo.yaml"));

#[cfg(test)]
mod tests {
    use dfp_core::Registry;

    #[test]
    fn the_built_in_families_parse() {
        let families = Registry::global().families();
        assert_eq!(families.names(), ["azure", "duo"]);
        for f in families.iter() {
            assert_eq!(f.model_prefix, f.name);
            assert!(f.normalizer.is_some(), "{} names its normalizer", f.name);
        }
    }
}
