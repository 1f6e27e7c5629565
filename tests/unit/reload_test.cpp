// Tests of the reload decisions: which setting changes need a restart, and which listening
// sockets a reload keeps, binds and closes.
#include "core/reload.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/unit/minimal_config.h"

namespace cloister {
namespace {

Config parse(std::string_view extra) {
    return parse_config(std::string(test::kMinimalConfig) + std::string(extra),
                        "/etc/cloister/cloister.toml");
}

TEST(RestartOnlyChanges, NoneForTheSameConfig) {
    const Config config = parse("[sandbox]\nseccomp = \"log\"\n");
    EXPECT_TRUE(restart_only_changes(config, config).empty());
}

TEST(RestartOnlyChanges, NoneForReloadableSettings) {
    const Config current = parse("");
    const Config next = parse(R"(
[server]
tls-backend = "botan"
log-level = "debug"

[limits]
spare-children = 9
max-connections = 20

[key-process]
workers = 3
)");
    EXPECT_TRUE(restart_only_changes(current, next).empty());
}

TEST(RestartOnlyChanges, NamesEachSandboxKeyWithItsLocation) {
    const Config current = parse("");
    const Config next = parse(R"(
[sandbox]
network-user = "proxy-net"
key-user = "proxy-key"
root-directory = "/var/empty/proxy"
seccomp = "log"
namespaces = false
connection-uids = "3000000-3065535"
connection-network = "none"
spawn = "exec"
)");
    const std::vector<std::string> changes = restart_only_changes(current, next);
    ASSERT_EQ(changes.size(), 8U);
    EXPECT_EQ(changes[0],
              R"([sandbox] network-user changed from "cloister-net" to "proxy-net" )"
              R"((/etc/cloister/cloister.toml:16:1); a restart applies it, a reload keeps )"
              R"("cloister-net")");
    EXPECT_NE(changes[1].find(R"([sandbox] key-user changed from "cloister-key" to "proxy-key")"),
              std::string::npos);
    EXPECT_NE(changes[2].find(R"(root-directory changed from "/var/lib/cloister/empty" to )"
                              R"("/var/empty/proxy")"),
              std::string::npos);
    EXPECT_NE(changes[3].find(R"([sandbox] seccomp changed from "enforce" to "log")"),
              std::string::npos);
    EXPECT_NE(changes[4].find(R"([sandbox] namespaces changed from "true" to "false")"),
              std::string::npos);
    EXPECT_NE(changes[5].find(R"([sandbox] connection-uids changed from "none" to )"
                              R"("3000000-3065535")"),
              std::string::npos);
    EXPECT_NE(changes[6].find(R"([sandbox] connection-network changed from "host" to "none")"),
              std::string::npos);
    EXPECT_NE(changes[7].find(R"([sandbox] spawn changed from "fork" to "exec")"),
              std::string::npos);
}

TEST(RestartOnlyChanges, NamesAddedChangedAndRemovedConnectionUids) {
    const Config none = parse("");
    const Config first = parse("[sandbox]\nconnection-uids = \"2000000-2001099\"\n");
    const Config second = parse("[sandbox]\nconnection-uids = \"3000000-3001099\"\n");

    const std::vector<std::string> added = restart_only_changes(none, first);
    ASSERT_EQ(added.size(), 1U);
    EXPECT_NE(added[0].find(R"([sandbox] connection-uids changed from "none" to )"
                            R"("2000000-2001099")"),
              std::string::npos);

    const std::vector<std::string> changed = restart_only_changes(first, second);
    ASSERT_EQ(changed.size(), 1U);
    EXPECT_NE(changed[0].find(R"(a reload keeps "2000000-2001099")"), std::string::npos);

    const std::vector<std::string> removed = restart_only_changes(first, none);
    ASSERT_EQ(removed.size(), 1U);
    EXPECT_NE(removed[0].find(R"(changed from "2000000-2001099" to "none")"), std::string::npos);

    EXPECT_TRUE(restart_only_changes(first, first).empty());
}

TEST(DiffListeners, KeepsOpensAndCloses) {
    const ListenerDiff diff =
        diff_listeners({"127.0.0.1:8443", "[::1]:8443", "unix:/run/a.sock"},
                       {"unix:/run/a.sock", "127.0.0.1:9443", "127.0.0.1:8443"});
    ASSERT_EQ(diff.reuse.size(), 3U);
    EXPECT_EQ(diff.reuse[0], std::optional<std::size_t>(2));
    EXPECT_EQ(diff.reuse[1], std::nullopt);
    EXPECT_EQ(diff.reuse[2], std::optional<std::size_t>(0));
    EXPECT_EQ(diff.removed, std::vector<std::size_t>{1});
}

TEST(DiffListeners, SameAddressesKeepEverySocket) {
    const ListenerDiff diff =
        diff_listeners({"127.0.0.1:1", "127.0.0.1:2"}, {"127.0.0.1:1", "127.0.0.1:2"});
    EXPECT_EQ(diff.reuse[0], std::optional<std::size_t>(0));
    EXPECT_EQ(diff.reuse[1], std::optional<std::size_t>(1));
    EXPECT_TRUE(diff.removed.empty());
}

TEST(DiffListeners, EachSocketServesOneAddress) {
    const ListenerDiff diff = diff_listeners({"127.0.0.1:1"}, {"127.0.0.1:1", "127.0.0.1:1"});
    EXPECT_EQ(diff.reuse[0], std::optional<std::size_t>(0));
    EXPECT_EQ(diff.reuse[1], std::nullopt);
    EXPECT_TRUE(diff.removed.empty());
}

TEST(DiffListeners, EmptyWantedClosesAll) {
    const ListenerDiff diff = diff_listeners({"127.0.0.1:1", "127.0.0.1:2"}, {});
    EXPECT_TRUE(diff.reuse.empty());
    EXPECT_EQ(diff.removed, (std::vector<std::size_t>{0, 1}));
}

TEST(OwnListenerConflict, WildcardOfARemovedListener) {
    const std::vector<std::string> current{"127.0.0.1:8443"};
    const std::vector<std::string> wanted{"0.0.0.0:8443"};
    const std::optional<std::string> message =
        own_listener_conflict(current, wanted, diff_listeners(current, wanted), 0);
    ASSERT_TRUE(message);
    EXPECT_NE(message->find("0.0.0.0:8443 overlaps 127.0.0.1:8443"), std::string::npos);
    EXPECT_NE(message->find("restart cloister to apply this change"), std::string::npos);
}

TEST(OwnListenerConflict, SpecificAddressUnderAWildcard) {
    const std::vector<std::string> current{"[::]:8443"};
    const std::vector<std::string> wanted{"[::1]:8443"};
    const std::optional<std::string> message =
        own_listener_conflict(current, wanted, diff_listeners(current, wanted), 0);
    ASSERT_TRUE(message);
    EXPECT_NE(message->find("[::1]:8443 overlaps [::]:8443"), std::string::npos);
}

TEST(OwnListenerConflict, AddressThatAnotherListenerKeeps) {
    // Two spellings of one address, such as "localhost:8443" and "127.0.0.1:8443".
    const std::vector<std::string> current{"127.0.0.1:8443"};
    const std::vector<std::string> wanted{"127.0.0.1:8443", "127.0.0.1:8443"};
    const ListenerDiff diff = diff_listeners(current, wanted);
    ASSERT_EQ(diff.reuse[1], std::nullopt);
    const std::optional<std::string> message = own_listener_conflict(current, wanted, diff, 1);
    ASSERT_TRUE(message);
    EXPECT_NE(message->find("which listener[0] keeps listening on; remove one of the two"),
              std::string::npos);
}

TEST(OwnListenerConflict, NoneForOtherPortsFamiliesAndUnixSockets) {
    const std::vector<std::string> current{"0.0.0.0:8443", "[::]:9443", "unix:/run/a.sock"};
    const std::vector<std::string> wanted{"127.0.0.1:9443", "[::1]:8443", "unix:/run/b.sock",
                                          "127.0.0.1:18443"};
    const ListenerDiff diff = diff_listeners(current, wanted);
    for (std::size_t i = 0; i < wanted.size(); ++i) {
        EXPECT_EQ(own_listener_conflict(current, wanted, diff, i), std::nullopt) << wanted[i];
    }
}

}  // namespace
}  // namespace cloister
