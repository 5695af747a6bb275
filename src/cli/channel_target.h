// Where `apikeyctl publish` and `revoke --publish` send a key file's
// changes: a Redis server, a channel on it, and the key that signs the
// entries (core/key_channel.h). Everything is read and checked before the
// first change is made, so a typo in an option never leaves a revocation
// written to the file and then not sent because of a usage error.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/ed25519.h"
#include "core/key_channel.h"
#include "core/redis_link.h"

namespace apikey::cli {

// A CLI waits longer than a node's sync process (50 ms): a person is
// waiting, and a chunk is up to 4 MiB.
constexpr int kCliConnectTimeoutMs = 2000;
constexpr int kCliCommandTimeoutMs = 5000;

// The option values as given (nullopt: not given).
struct ChannelOptions {
    std::optional<std::string> redis;          // --redis ADDRESS
    std::optional<std::string> channel;        // --channel NAME
    std::optional<std::string> sign;           // --sign KEY.pem
    std::optional<std::string> password_file;  // --redis-password-file PATH
    std::optional<std::string> user;           // --redis-user NAME
    std::optional<std::string> db;             // --redis-db N
    std::optional<std::string> prefix;         // --redis-prefix P
};

struct ChannelTarget {
    RedisEndpoint endpoint;
    std::string prefix{kChannelDefaultPrefix};
    std::string channel;
    std::optional<Ed25519Signer> signer;  // --sign
};

// Checks the options and reads the password and signing key. Throws
// UsageError for a missing or malformed option (`command` names the
// command), Error for a file that cannot be read or a key that is not an
// Ed25519 private key.
ChannelTarget channel_target(const ChannelOptions &options, const std::string &command);

// The first line of a password file, as api_key_redis password_file= reads
// it (at most 511 bytes). Throws Error; the message never holds the password.
std::string read_password_file(const std::string &path);

// A connected link; throws Error ("Redis ADDRESS: reason").
std::unique_ptr<RedisLink> connect_channel(const ChannelTarget &target);

// The options of the command that would publish to this target again (for
// messages that say how to retry): "--redis A --channel C [--sign K] ...".
std::string channel_retry_options(const ChannelOptions &options);

}  // namespace apikey::cli
