// Tests for SNI-based vhost selection: exact and wildcard matching, names that must match
// nothing, and the missing-SNI and unknown-SNI policies.
#include "core/vhost_table.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cloister {
namespace {

VhostConfig make_vhost(std::vector<std::string> names, bool is_default = false) {
    VhostConfig vhost;
    vhost.name = names.empty() ? "nameless" : names.front();
    vhost.server_names = std::move(names);
    vhost.is_default = is_default;
    vhost.default_explicit = is_default;
    vhost.where = SourceLocation{"cloister.toml", 1, 1};
    return vhost;
}

TlsConfig make_tls(SniMismatch missing, SniMismatch unknown) {
    TlsConfig tls;
    tls.missing_sni = missing;
    tls.unknown_sni = unknown;
    return tls;
}

// vhost[0] serves a.example.test exactly, vhost[1] the wildcard *.example.test, and
// vhost[2] other.test, as the default.
std::vector<VhostConfig> three_vhosts() {
    return {make_vhost({"a.example.test"}), make_vhost({"*.example.test"}),
            make_vhost({"other.test"}, true)};
}

const TlsConfig kLenient = make_tls(SniMismatch::use_default, SniMismatch::use_default);

TEST(VhostMatch, ExactIgnoresCase) {
    const VhostTable table(three_vhosts(), kLenient);
    EXPECT_EQ(table.match("A.Example.TEST"), 0U);
    EXPECT_EQ(table.match("a.example.test"), 0U);
}

TEST(VhostMatch, WildcardIgnoresCase) {
    const VhostTable table(three_vhosts(), kLenient);
    EXPECT_EQ(table.match("Foo.EXAMPLE.test"), 1U);
    EXPECT_EQ(table.match("x-1.example.test"), 1U);
}

TEST(VhostMatch, WildcardCoversOneLabelOnly) {
    const VhostTable table(three_vhosts(), kLenient);
    EXPECT_EQ(table.match("a.b.example.test"), std::nullopt);
    EXPECT_EQ(table.match("example.test"), std::nullopt);
    EXPECT_EQ(table.match(".example.test"), std::nullopt);
    EXPECT_EQ(table.match("*.example.test"), std::nullopt);
    EXPECT_EQ(table.match("-a.example.test"), std::nullopt);
}

TEST(VhostMatch, TrailingDotStrippedOnce) {
    const VhostTable table(three_vhosts(), kLenient);
    EXPECT_EQ(table.match("a.example.test."), 0U);
    EXPECT_EQ(table.match("Foo.example.test."), 1U);
    EXPECT_EQ(table.match("a.example.test.."), std::nullopt);
    EXPECT_EQ(table.match("."), std::nullopt);
    EXPECT_EQ(table.match(""), std::nullopt);
}

TEST(VhostMatch, IpLiteralMatchesNothing) {
    // Names the loader would reject, so that only the IP-literal rule can keep them apart.
    const std::vector<VhostConfig> vhosts{make_vhost({"127.0.0.1", "*.0.0.1"}),
                                          make_vhost({"other.test"}, true)};
    const VhostTable table(vhosts, kLenient);
    EXPECT_EQ(table.match("127.0.0.1"), std::nullopt);
    EXPECT_EQ(table.match("10.0.0.1"), std::nullopt);
    EXPECT_EQ(table.match("::1"), std::nullopt);
}

TEST(VhostMatch, NonAsciiAndControlBytesMatchNothing) {
    const std::string utf8 =
        "b\xC3\xBC"
        "cher.example.test";
    const std::vector<VhostConfig> vhosts{make_vhost({utf8, "tab\t.example.test"}),
                                          make_vhost({"*.example.test"}, true)};
    const VhostTable table(vhosts, kLenient);
    EXPECT_EQ(table.match(utf8), std::nullopt);
    EXPECT_EQ(table.match("tab\t.example.test"), std::nullopt);
    EXPECT_EQ(table.match(std::string_view("a\0.example.test", 15)), std::nullopt);
    EXPECT_EQ(table.match("a b.example.test"), std::nullopt);
    EXPECT_EQ(table.match("\xFF\xFE.example.test"), std::nullopt);
}

TEST(VhostMatch, OverlongNameMatchesNothing) {
    std::string name;
    for (int i = 0; i < 4; ++i) {
        name += std::string(62, 'a') + ".";
    }
    name += "test";  // 4 * 63 + 4 = 256 bytes
    const VhostTable table({make_vhost({name})}, kLenient);
    EXPECT_EQ(table.match(name), std::nullopt);
}

TEST(VhostSelect, MatchedNameSetsFlag) {
    const VhostTable table(three_vhosts(), kLenient);
    const auto exact = table.select("A.Example.TEST");
    EXPECT_EQ(exact.vhost, 0U);
    EXPECT_TRUE(exact.matched_name);

    const auto wildcard = table.select("Foo.EXAMPLE.test");
    EXPECT_EQ(wildcard.vhost, 1U);
    EXPECT_TRUE(wildcard.matched_name);
}

TEST(VhostSelect, IpLiteralFollowsUnknownPolicy) {
    const VhostTable lenient(three_vhosts(), kLenient);
    for (const std::string_view sni : {"127.0.0.1", "::1"}) {
        const auto selection = lenient.select(sni);
        EXPECT_EQ(selection.vhost, 2U) << sni;
        EXPECT_FALSE(selection.matched_name) << sni;
    }
    const VhostTable strict(three_vhosts(),
                            make_tls(SniMismatch::use_default, SniMismatch::reject));
    EXPECT_EQ(strict.select("127.0.0.1").vhost, std::nullopt);
    EXPECT_EQ(strict.select("::1").vhost, std::nullopt);
}

TEST(VhostSelect, RawUtf8FollowsUnknownPolicy) {
    const VhostTable table(three_vhosts(), kLenient);
    const auto selection = table.select("\xC3\xBC.example.test");
    EXPECT_EQ(selection.vhost, 2U);
    EXPECT_FALSE(selection.matched_name);
}

struct PolicyCase {
    SniMismatch missing;
    SniMismatch unknown;
    std::optional<std::size_t> without_sni;
    std::optional<std::size_t> unknown_name;
};

TEST(VhostSelect, PolicyMatrix) {
    const std::vector<PolicyCase> cases{
        {SniMismatch::use_default, SniMismatch::use_default, 2U, 2U},
        {SniMismatch::use_default, SniMismatch::reject, 2U, std::nullopt},
        {SniMismatch::reject, SniMismatch::use_default, std::nullopt, 2U},
        {SniMismatch::reject, SniMismatch::reject, std::nullopt, std::nullopt},
    };
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const PolicyCase& expected = cases[i];
        const VhostTable table(three_vhosts(), make_tls(expected.missing, expected.unknown));

        const auto without_sni = table.select(std::nullopt);
        EXPECT_EQ(without_sni.vhost, expected.without_sni) << "case " << i;
        EXPECT_FALSE(without_sni.matched_name) << "case " << i;

        const auto unknown = table.select("unknown.other.test");
        EXPECT_EQ(unknown.vhost, expected.unknown_name) << "case " << i;
        EXPECT_FALSE(unknown.matched_name) << "case " << i;

        // A served name is selected under every policy.
        EXPECT_EQ(table.select("other.test").vhost, 2U) << "case " << i;
    }
}

TEST(VhostSelect, ExactBeatsDefaultWildcard) {
    const std::vector<VhostConfig> vhosts{make_vhost({"*.example.test"}, true),
                                          make_vhost({"a.example.test"})};
    const VhostTable table(vhosts, kLenient);

    EXPECT_EQ(table.select("a.example.test").vhost, 1U);
    EXPECT_EQ(table.select("b.example.test").vhost, 0U);
    EXPECT_TRUE(table.select("b.example.test").matched_name);
    EXPECT_EQ(table.select("unknown.test").vhost, 0U);
    EXPECT_FALSE(table.select("unknown.test").matched_name);
}

TEST(VhostDefault, FirstWhenNoneMarked) {
    const VhostTable table({make_vhost({"a.test"}), make_vhost({"b.test"})}, kLenient);
    EXPECT_EQ(table.default_vhost(), 0U);
    EXPECT_EQ(table.select(std::nullopt).vhost, 0U);
}

TEST(VhostDefault, MarkedVhost) {
    const VhostTable table(three_vhosts(), kLenient);
    EXPECT_EQ(table.default_vhost(), 2U);
}

TEST(VhostDefault, EmptyTableSelectsNothing) {
    const VhostTable table({}, kLenient);
    EXPECT_EQ(table.default_vhost(), std::nullopt);
    EXPECT_EQ(table.select(std::nullopt).vhost, std::nullopt);
    EXPECT_EQ(table.select("a.test").vhost, std::nullopt);
}

std::string construction_error(const std::vector<VhostConfig>& vhosts) {
    try {
        const VhostTable table(vhosts, kLenient);
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    ADD_FAILURE() << "VhostTable accepted the vhosts";
    return {};
}

TEST(VhostErrors, TwoDefaults) {
    std::vector<VhostConfig> vhosts{make_vhost({"a.test"}, true), make_vhost({"b.test"}, true)};
    vhosts[1].where = SourceLocation{"cloister.toml", 20, 1};
    EXPECT_EQ(construction_error(vhosts),
              "cloister.toml:20:1: vhost[1]: vhost[0] at cloister.toml:1:1 is already the "
              "default; expected at most one default vhost");
}

TEST(VhostErrors, DuplicateNameWithLocations) {
    std::vector<VhostConfig> vhosts{make_vhost({"a.test", "*.b.test"}),
                                    make_vhost({"c.test", "*.B.Test"})};
    vhosts[0].server_name_locations = {{"c.toml", 3, 17}, {"c.toml", 3, 27}};
    vhosts[1].server_name_locations = {{"c.toml", 9, 17}, {"c.toml", 9, 27}};
    EXPECT_EQ(construction_error(vhosts),
              "c.toml:9:27: vhost[1].server-names[1]: duplicate server name \"*.b.test\", first "
              "listed as vhost[0].server-names[1] at c.toml:3:27; expected each name once "
              "across all vhosts (names are case-insensitive)");
}

TEST(VhostErrors, DuplicateNameWithoutLocations) {
    std::vector<VhostConfig> vhosts{make_vhost({"A.test", "a.TEST"})};
    EXPECT_EQ(construction_error(vhosts),
              "cloister.toml:1:1: vhost[0].server-names[1]: duplicate server name \"a.test\", "
              "first listed as vhost[0].server-names[0] at cloister.toml:1:1; expected each "
              "name once across all vhosts (names are case-insensitive)");
}

TEST(VhostMatch, WildcardAndExactAreDistinct) {
    const VhostTable table({make_vhost({"example.test", "*.example.test"})}, kLenient);
    EXPECT_EQ(table.match("example.test"), 0U);
    EXPECT_EQ(table.match("a.example.test"), 0U);
}

TEST(VhostWarnings, DefaultFlagUselessWhenStrict) {
    const VhostTable table(three_vhosts(), make_tls(SniMismatch::reject, SniMismatch::reject));
    ASSERT_EQ(table.warnings().size(), 1U);
    EXPECT_EQ(table.warnings()[0],
              "cloister.toml:1:1: vhost[2] (other.test) sets default = true, which has no "
              "effect because tls.unknown-sni and tls.missing-sni are both \"reject\"; clients "
              "reach it only through its server names");
}

TEST(VhostWarnings, NoneWhenOnePolicyLenient) {
    const VhostTable missing_lenient(three_vhosts(),
                                     make_tls(SniMismatch::use_default, SniMismatch::reject));
    EXPECT_TRUE(missing_lenient.warnings().empty());
    const VhostTable unknown_lenient(three_vhosts(),
                                     make_tls(SniMismatch::reject, SniMismatch::use_default));
    EXPECT_TRUE(unknown_lenient.warnings().empty());
}

TEST(VhostWarnings, NoneForImplicitDefault) {
    std::vector<VhostConfig> vhosts{make_vhost({"a.test"}), make_vhost({"b.test"})};
    vhosts[0].is_default = true;  // chosen by the loader, not written in the config
    const VhostTable table(vhosts, make_tls(SniMismatch::reject, SniMismatch::reject));
    EXPECT_TRUE(table.warnings().empty());
}

TEST(VhostWarnings, NamelessDefaultUnreachable) {
    const VhostTable table({make_vhost({}, true), make_vhost({"b.test"})},
                           make_tls(SniMismatch::reject, SniMismatch::reject));
    ASSERT_EQ(table.warnings().size(), 1U);
    EXPECT_EQ(table.warnings()[0],
              "cloister.toml:1:1: vhost[0] has no server names and tls.unknown-sni and "
              "tls.missing-sni are both \"reject\", so no client can reach it");
}

TEST(VhostTableFromConfig, LoadedConfigSelects) {
    const Config config = parse_config(R"([[listener]]
address = "127.0.0.1:8443"

[tls]
unknown-sni = "reject"

[[key]]
name = "rsa"
file = "rsa.key"

[[vhost]]
server-names = ["*.Example.Test"]
backend = "127.0.0.1:8080"
[[vhost.certificate]]
chain = "rsa.pem"
key = "rsa"

[[vhost]]
server-names = ["API.example.test"]
backend = "127.0.0.1:8081"
[[vhost.certificate]]
chain = "rsa.pem"
key = "rsa"
)",
                                       "cloister.toml");
    const VhostTable table(config.vhosts, config.tls);

    EXPECT_EQ(table.select("api.EXAMPLE.test").vhost, 1U);
    EXPECT_EQ(table.select("www.example.test").vhost, 0U);
    EXPECT_EQ(table.select("www.other.test").vhost, std::nullopt);
    EXPECT_EQ(table.select(std::nullopt).vhost, 0U);
    EXPECT_TRUE(table.warnings().empty());
}

TEST(AsciiLowercase, OnlyAsciiLetters) {
    EXPECT_EQ(ascii_lowercase("MiXeD-123.Example_Z@["), "mixed-123.example_z@[");
    EXPECT_EQ(ascii_lowercase("\xC3\x9C"), "\xC3\x9C");
    EXPECT_EQ(ascii_lowercase(""), "");
}

TEST(LdhLabel, Rules) {
    EXPECT_TRUE(is_ldh_label("a"));
    EXPECT_TRUE(is_ldh_label("xn--bcher-kva"));
    EXPECT_TRUE(is_ldh_label(std::string(63, 'a')));
    EXPECT_FALSE(is_ldh_label(std::string(64, 'a')));
    EXPECT_FALSE(is_ldh_label(""));
    EXPECT_FALSE(is_ldh_label("-a"));
    EXPECT_FALSE(is_ldh_label("a-"));
    EXPECT_FALSE(is_ldh_label("a_b"));
    EXPECT_FALSE(is_ldh_label("*"));
}

TEST(IpLiteral, Forms) {
    EXPECT_TRUE(is_ip_literal("127.0.0.1"));
    EXPECT_TRUE(is_ip_literal("127.1"));
    EXPECT_TRUE(is_ip_literal("0x7f000001"));
    EXPECT_TRUE(is_ip_literal("::1"));
    EXPECT_TRUE(is_ip_literal("fe80::1"));
    EXPECT_FALSE(is_ip_literal("www.example.test"));
    EXPECT_FALSE(is_ip_literal("1.example.test"));
    EXPECT_FALSE(is_ip_literal("localhost"));
}

}  // namespace
}  // namespace cloister
