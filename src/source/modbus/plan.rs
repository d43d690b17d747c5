//! Read planning: tags of one table and poll interval, sorted by address,
//! are merged into as few reads as `max_registers_per_read` allows. A read
//! bridges at most `max_gap_registers` unused registers (0 by default: a
//! read across an unmapped register fails on many devices, taking every tag
//! of the read down with it).

use std::time::Duration;

use super::config::{ModbusConfig, Table};

/// Coils/discrete inputs per read (the Modbus limit is 2000).
const MAX_BITS_PER_READ: u16 = 2000;

/// One Modbus read request and the tags it feeds.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadGroup {
    /// Data table.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// How often.
    pub interval: Duration,
    /// Indices into the device's `tags`.
    pub tags: Vec<usize>,
}

/// Plans the reads of one device.
pub fn plan(device: &ModbusConfig) -> Vec<ReadGroup> {
    let mut order: Vec<usize> = (0..device.tags.len()).collect();
    let key = |i: &usize| {
        let t = &device.tags[*i];
        (
            t.table,
            t.poll_interval.unwrap_or(device.poll_interval),
            t.address,
        )
    };
    order.sort_by_key(key);
    let mut groups: Vec<ReadGroup> = Vec::new();
    for i in order {
        let tag = &device.tags[i];
        let interval = tag.poll_interval.unwrap_or(device.poll_interval);
        let limit = if tag.table.is_bits() {
            MAX_BITS_PER_READ
        } else {
            device.max_registers_per_read
        };
        let end = u32::from(tag.address) + u32::from(tag.width());
        if let Some(g) = groups.last_mut() {
            let g_end = u32::from(g.start) + u32::from(g.count);
            let fits = end.max(g_end) - u32::from(g.start) <= u32::from(limit);
            let close = u32::from(tag.address) <= g_end + u32::from(device.max_gap_registers);
            if g.table == tag.table && g.interval == interval && fits && close {
                g.count = (end.max(g_end) - u32::from(g.start)) as u16;
                g.tags.push(i);
                continue;
            }
        }
        groups.push(ReadGroup {
            table: tag.table,
            start: tag.address,
            count: tag.width(),
            interval,
            tags: vec![i],
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(extra: &str, tags: &[(&str, u16, &str)]) -> ModbusConfig {
        let mut text = format!(
            "name = \"d\"\naddress = \"127.0.0.1:1\"\nmax_registers_per_read = 8\n{extra}\n"
        );
        for (table, address, kind) in tags {
            text += &format!(
                "[[tags]]\nname = \"t{address}{table}\"\ntable = \"{table}\"\naddress = {address}\ntype = \"{kind}\"\n"
            );
        }
        toml::from_str(&text).expect("device")
    }

    #[test]
    fn adjacent_tags_merge_up_to_the_limit() {
        let d = device(
            "",
            &[
                ("holding", 0, "f32"),
                ("holding", 2, "u16"),
                ("holding", 3, "u64"),
                ("holding", 7, "f32"),
            ],
        );
        let g = plan(&d);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!((g[0].start, g[0].count, g[0].tags.len()), (0, 7, 3));
        assert_eq!((g[1].start, g[1].count), (7, 2));
    }

    #[test]
    fn gaps_split_unless_allowed_and_tables_never_mix() {
        let tags = [
            ("holding", 0, "u16"),
            ("holding", 2, "u16"),
            ("input", 3, "u16"),
            ("coil", 0, "bool"),
            ("coil", 1, "bool"),
        ];
        let g = plan(&device("", &tags));
        assert_eq!(g.len(), 4, "{g:?}");
        let g = plan(&device("max_gap_registers = 1", &tags));
        assert_eq!(g.len(), 3, "{g:?}");
        assert_eq!((g[0].table, g[0].start, g[0].count), (Table::Holding, 0, 3));
        assert_eq!((g[2].table, g[2].count), (Table::Coil, 2));
    }
}
