#include "key_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include "config_rules.h"
#include "quoted.h"
#include "timestamp.h"
#include "yaml_subset.h"

namespace apikey {

namespace {

constexpr std::size_t kMaxTextLength = 128;

// clang-format off
enum class Field {
    version, prefixes, keys,                               // top level
    id, hash, owner, organization_id, plan, scopes,        // key record
    created_at, expires_at, revoked_at, limits, allowed_ips,
    none
};
// clang-format on

struct FieldName {
    std::string_view name;
    Field field;
};

constexpr FieldName kTopFields[] = {
    {"version", Field::version}, {"prefixes", Field::prefixes}, {"keys", Field::keys}};

constexpr FieldName kKeyFields[] = {
    {"id", Field::id},
    {"hash", Field::hash},
    {"owner", Field::owner},
    {"organization_id", Field::organization_id},
    {"plan", Field::plan},
    {"scopes", Field::scopes},
    {"created_at", Field::created_at},
    {"expires_at", Field::expires_at},
    {"revoked_at", Field::revoked_at},
    {"limits", Field::limits},
    {"allowed_ips", Field::allowed_ips},
};

template <std::size_t N>
const FieldName *lookup(const FieldName (&fields)[N], std::string_view name) {
    for (const FieldName &f : fields) {
        // The first byte first: most names differ there, without a memcmp.
        if (f.name.size() == name.size() && f.name[0] == name[0] && f.name == name) return &f;
    }
    return nullptr;
}

// yaml-cpp pushes events; this is the schema as a small state machine.
// Every container is checked against what the schema allows at that point,
// so the structure can never be deeper than key -> limits -> value (or
// key -> scopes / allowed_ips -> item).
class SchemaHandler final : public YAML::EventHandler, public ScalarViewHandler {
public:
    explicit SchemaHandler(KeyFileSink &sink) : sink_(sink) {}

    void finish() const {
        if (!seen_root_) throw KeyFileError(1, "the file holds no YAML document");
        if (!seen_version_) throw KeyFileError(1, "\"version\" is missing");
    }

    void OnDocumentStart(const YAML::Mark &) override {}
    void OnDocumentEnd() override {}

    void OnAlias(const YAML::Mark &mark, YAML::anchor_t) override {
        throw KeyFileError(line(mark), "YAML aliases are not allowed in a key file");
    }

    // yaml-cpp marks an empty value at the token after it, often the next
    // line; the line of its field name is the one worth reporting.
    void OnNull(const YAML::Mark &mark, YAML::anchor_t) override {
        YAML::Mark at = mark;
        if (state_ == State::top_value || state_ == State::key_value ||
            state_ == State::prefix_value || state_ == State::limit_value) {
            at.line = static_cast<int>(name_line_) - 1;
        }
        value(at, nullptr);
    }

    void OnScalar(const YAML::Mark &mark, const std::string &, YAML::anchor_t,
                  const std::string &text) override {
        const std::string_view view(text);
        value(mark, &view);
    }

    // The fast reader's scalars: no std::string each.
    void OnScalarView(const YAML::Mark &mark, bool, std::string_view text) override {
        value(mark, &text);
    }

    void OnSequenceStart(const YAML::Mark &mark, const std::string &, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        if (state_ == State::top_value && field_ == Field::keys) {
            state_ = State::keys;
        } else if (state_ == State::key_value && field_ == Field::scopes) {
            state_ = State::scopes;
            spec_.scopes.clear();
        } else if (state_ == State::key_value && field_ == Field::allowed_ips) {
            state_ = State::networks;
            spec_.allowed_ips.clear();
        } else {
            unexpected(mark, "a list");
        }
    }

    void OnSequenceEnd() override {
        if (state_ == State::keys) {
            state_ = State::top;
        } else if (state_ == State::networks) {
            if (spec_.allowed_ips.empty()) no_networks(name_line_);
            state_ = State::key;
        } else {  // scopes
            state_ = State::key;
        }
    }

    void OnMapStart(const YAML::Mark &mark, const std::string &, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {
        if (state_ == State::start) {
            state_ = State::top;
            seen_root_ = true;
        } else if (state_ == State::top_value && field_ == Field::prefixes) {
            state_ = State::prefixes;
        } else if (state_ == State::keys) {
            state_ = State::key;
            reset_spec();
            spec_.line = line(mark);
            seen_fields_ = 0;
        } else if (state_ == State::key_value && field_ == Field::limits) {
            state_ = State::limits;
        } else {
            unexpected(mark, "a map");
        }
    }

    void OnMapEnd() override {
        switch (state_) {
        case State::top: state_ = State::done; break;
        case State::prefixes: state_ = State::top; break;
        case State::limits: state_ = State::key; break;
        case State::key:
            finish_key();
            state_ = State::keys;
            break;
        default: break;
        }
    }

private:
    // clang-format off
    enum class State {
        start, top, top_value, prefixes, prefix_value, keys, key, key_value, scopes, networks,
        limits, limit_value, done
    };
    // clang-format on

    static std::uint32_t line(const YAML::Mark &mark) {
        return static_cast<std::uint32_t>(mark.line + 1);
    }

    [[noreturn]] void unexpected(const YAML::Mark &mark, const char *what) const {
        switch (state_) {
        case State::start:
            throw KeyFileError(line(mark), std::string("the top level must be a map, not ") + what);
        case State::keys:
            throw KeyFileError(line(mark),
                               std::string("each entry of \"keys\" must be a map, not ") + what);
        case State::top_value:
        case State::key_value:
            throw KeyFileError(line(mark),
                               quoted(name_) + " must be " + expected() + ", not " + what);
        case State::scopes:
            throw KeyFileError(line(mark), std::string("each scope must be a string, not ") + what);
        case State::networks:
            // "2001:db8::" unquoted reads as a map: its last colon makes it a key.
            throw KeyFileError(line(mark),
                               std::string("each entry of \"allowed_ips\" must be a network such "
                                           "as 203.0.113.0/24, not ") +
                                   what + " (quote IPv6 networks: \"2001:db8::/32\")");
        case State::prefix_value:
        case State::limit_value:
            throw KeyFileError(line(mark), quoted(name_) + " must be a string, not " + what);
        case State::done:
            throw KeyFileError(line(mark), "the file holds more than one YAML document");
        default: throw KeyFileError(line(mark), std::string(what) + " is not expected here");
        }
    }

    const char *expected() const {
        switch (field_) {
        case Field::prefixes: return "a map of prefix to environment";
        case Field::keys: return "a list of key records";
        case Field::scopes: return "a list of scope names";
        case Field::limits: return "a map of category to rate";
        case Field::allowed_ips: return "a list of networks";
        default: return "a single value";
        }
    }

    // A new record; the lists keep their memory from the last one.
    void reset_spec() {
        auto scopes = std::move(spec_.scopes);
        auto limits = std::move(spec_.limits);
        auto networks = std::move(spec_.allowed_ips);
        spec_ = KeySpec{};
        scopes.clear();
        limits.clear();
        networks.clear();
        spec_.scopes = std::move(scopes);
        spec_.limits = std::move(limits);
        spec_.allowed_ips = std::move(networks);
    }

    // One scalar or null, wherever it appears.
    void value(const YAML::Mark &mark, const std::string_view *text) {
        switch (state_) {
        case State::start: unexpected(mark, "a single value");
        case State::top:
            field_name(mark, text, kTopFields, State::top_value, seen_top_fields_);
            return;
        case State::key: field_name(mark, text, kKeyFields, State::key_value, seen_fields_); return;
        case State::prefixes:
        case State::limits:
            if (!text) throw KeyFileError(line(mark), "a null map key is not allowed");
            name_text_ = *text;
            name_ = name_text_;
            name_line_ = line(mark);
            state_ = state_ == State::prefixes ? State::prefix_value : State::limit_value;
            return;
        case State::top_value:
            top_value(mark, text);
            state_ = State::top;
            return;
        case State::key_value:
            key_value(mark, text);
            state_ = State::key;
            return;
        case State::prefix_value:
            prefix_value(mark, text);
            state_ = State::prefixes;
            return;
        case State::limit_value:
            limit_value(mark, text);
            state_ = State::limits;
            return;
        case State::scopes:
            if (!text) throw KeyFileError(line(mark), "a scope must not be null");
            check_identifier(mark, "scope", *text);
            spec_.scopes.emplace_back(*text);
            return;
        case State::networks: network(mark, text); return;
        case State::keys: unexpected(mark, text ? "a single value" : "null");
        case State::done:
            throw KeyFileError(line(mark), "the file holds more than one YAML document");
        }
    }

    template <std::size_t N>
    void field_name(const YAML::Mark &mark, const std::string_view *text,
                    const FieldName (&fields)[N], State next, unsigned &seen) {
        if (!text) throw KeyFileError(line(mark), "a null map key is not allowed");
        const FieldName *f = lookup(fields, *text);
        if (f == nullptr) throw KeyFileError(line(mark), "unknown field " + quoted(*text));
        field_ = f->field;
        const unsigned bit = 1u << static_cast<unsigned>(field_);
        if (seen & bit) throw KeyFileError(line(mark), "duplicate field " + quoted(*text));
        seen |= bit;
        name_ = f->name;  // the same text, kept without a copy
        name_line_ = line(mark);
        state_ = next;
    }

    void top_value(const YAML::Mark &mark, const std::string_view *text) {
        switch (field_) {
        case Field::version:
            if (!text || *text != "1") {
                throw KeyFileError(line(mark), "unsupported \"version\", only 1 is known");
            }
            seen_version_ = true;
            return;
        case Field::prefixes:
        case Field::keys:
            if (!text) return;  // "keys:" with nothing under it is an empty list
            [[fallthrough]];
        default: unexpected(mark, "a single value");
        }
    }

    void key_value(const YAML::Mark &mark, const std::string_view *text) {
        if (field_ == Field::scopes && !text) {
            spec_.scopes.clear();
            return;
        }
        if (field_ == Field::allowed_ips) {
            if (!text) no_networks(line(mark));
            unexpected(mark, "a single value");
        }
        if (field_ == Field::scopes || field_ == Field::limits) {
            if (!text) return;
            unexpected(mark, "a single value");
        }
        if (!text) {
            if (field_ == Field::organization_id || field_ == Field::expires_at ||
                field_ == Field::revoked_at || field_ == Field::created_at) {
                return;  // absent
            }
            throw KeyFileError(line(mark), quoted(name_) + " must not be null");
        }
        const std::string_view v = *text;
        switch (field_) {
        case Field::id:
            check_identifier(mark, "id", v);
            spec_.id = v;
            return;
        case Field::hash:
            if (!parse_digest(v, spec_.hash)) {
                throw KeyFileError(line(mark),
                                   "\"hash\" must be \"sha256:\" and 64 lowercase hex digits");
            }
            return;
        case Field::owner:
            check_identifier(mark, "owner", v);
            spec_.owner = v;
            return;
        case Field::organization_id:
            check_identifier(mark, "organization_id", v);
            spec_.organization = v;
            return;
        case Field::plan:
            check_identifier(mark, "plan", v);
            spec_.plan = v;
            return;
        case Field::created_at: spec_.created_at = time(mark, v); return;
        case Field::expires_at: spec_.expires_at = time(mark, v); return;
        case Field::revoked_at: spec_.revoked_at = time(mark, v); return;
        default: return;
        }
    }

    std::int64_t time(const YAML::Mark &mark, std::string_view v) const {
        auto t = parse_timestamp(v);
        if (!t) {
            throw KeyFileError(line(mark), quoted(name_) + " is not a valid timestamp " +
                                               quoted(v) + " (expected e.g. 2027-01-30T00:00:00Z)");
        }
        return *t;
    }

    void prefix_value(const YAML::Mark &mark, const std::string_view *text) {
        Environment env;
        if (text && *text == "live") {
            env = Environment::live;
        } else if (text && *text == "test") {
            env = Environment::test;
        } else {
            throw KeyFileError(line(mark), "the environment of prefix " + quoted(name_) +
                                               " must be \"live\" or \"test\"");
        }
        if (name_.empty() || name_.size() > 64 || !is_identifier(name_)) {
            throw KeyFileError(line(mark), "invalid prefix " + quoted(name_));
        }
        sink_.on_prefix(line(mark), name_, env);
    }

    void limit_value(const YAML::Mark &mark, const std::string_view *text) {
        check_identifier(mark, "limit category", name_);
        auto rate = text ? parse_rate(*text) : std::nullopt;
        if (!rate) {
            throw KeyFileError(line(mark), "invalid rate for category " + quoted(name_) +
                                               " (expected e.g. 500r/m)");
        }
        for (const auto &l : spec_.limits) {
            if (l.first == name_) {
                throw KeyFileError(line(mark), "duplicate limit category " + quoted(name_));
            }
        }
        spec_.limits.emplace_back(name_, *rate);
    }

    // An empty list would read as "from nowhere" to some and "from anywhere"
    // to others: neither is written this way on purpose.
    [[noreturn]] static void no_networks(std::uint32_t at) {
        throw KeyFileError(at,
                           "\"allowed_ips\" is empty: list at least one network, or leave the "
                           "field out to accept the key from any address");
    }

    void network(const YAML::Mark &mark, const std::string_view *text) {
        if (!text) {
            throw KeyFileError(line(mark), "an entry of \"allowed_ips\" must not be null");
        }
        IpNetwork net;
        std::string error;
        if (!parse_network(*text, net, error)) throw KeyFileError(line(mark), error);
        for (const IpNetwork &seen : spec_.allowed_ips) {
            if (seen == net) {
                throw KeyFileError(line(mark), "duplicate network " + quoted(format_network(net)) +
                                                   " in \"allowed_ips\"");
            }
        }
        if (spec_.allowed_ips.size() == kMaxAllowedIps) {
            throw KeyFileError(line(mark), "more than " + std::to_string(kMaxAllowedIps) +
                                               " networks in \"allowed_ips\"");
        }
        spec_.allowed_ips.push_back(net);
    }

    void check_identifier(const YAML::Mark &mark, const char *what, std::string_view v) const {
        if (!is_identifier(v)) {
            throw KeyFileError(line(mark),
                               std::string("invalid ") + what + " " + quoted(v.substr(0, 64)) +
                                   " (1 to 128 printable characters, no blanks, quotes or "
                                   "backslashes)");
        }
    }

    void finish_key() {
        constexpr std::pair<Field, const char *> required[] = {
            {Field::id, "id"}, {Field::hash, "hash"}, {Field::owner, "owner"}};
        for (const auto &[field, name] : required) {
            if (!(seen_fields_ & (1u << static_cast<unsigned>(field)))) {
                throw KeyFileError(spec_.line, std::string("key record has no \"") + name + "\"");
            }
        }
        sink_.on_key(spec_);
    }

    KeyFileSink &sink_;
    State state_ = State::start;
    Field field_ = Field::none;
    std::string_view name_;  // a field's name (static), or name_text_
    std::string name_text_;  // a prefix or limit category
    std::uint32_t name_line_ = 1;
    KeySpec spec_;
    unsigned seen_fields_ = 0;
    unsigned seen_top_fields_ = 0;
    bool seen_root_ = false;
    bool seen_version_ = false;
};

class BuildingSink final : public KeyFileSink {
public:
    void on_prefix(std::uint32_t line, std::string_view prefix, Environment env) override {
        builder.add_prefix(line, prefix, env);
    }
    void on_key(const KeySpec &spec) override { builder.add_key(spec); }

    TableBuilder builder;
};

void read_with_yaml_cpp(std::string_view text, KeyFileSink &sink) {
    SchemaHandler handler(sink);
    try {
        std::istringstream in{std::string(text)};
        YAML::Parser parser(in);
        if (parser.HandleNextDocument(handler)) {
            if (parser.HandleNextDocument(handler)) {
                throw KeyFileError(1, "the file holds more than one YAML document");
            }
        }
    } catch (const YAML::Exception &e) {
        throw KeyFileError(static_cast<std::uint32_t>(e.mark.line + 1), e.msg);
    }
    handler.finish();
}

// A builder sized for the file: records are at least about 100 bytes of
// YAML, and a record's strings take less room in the table than in the file.
void reserve_for(TableBuilder &builder, std::size_t text_bytes) {
    builder.reserve(text_bytes / 96 + 16, text_bytes / 8 + 64);
}

// What read_key_file and a build give, with the fast reader in one pass
// rather than two: the sink is ours, so a file that turns out to be outside
// the subset half-way costs only the builder, and yaml-cpp reads it into a
// new one. An error the handler raised stands if the whole file is in the
// subset (read_key_file would have raised it too), else yaml-cpp decides.
TableImage build_table(std::string_view text) {
    {
        BuildingSink sink;
        reserve_for(sink.builder, text.size());
        bool in_subset = true;
        try {
            SchemaHandler handler(sink);
            read_yaml_subset_at_once(text, handler);
            handler.finish();
        } catch (const NotInSubset &) {
            in_subset = false;
        } catch (const KeyFileError &) {
            if (in_yaml_subset(text)) throw;
            in_subset = false;
        }
        if (in_subset) return sink.builder.build();
    }
    BuildingSink sink;
    read_with_yaml_cpp(text, sink);
    return sink.builder.build();
}

}  // namespace

void read_key_file(std::string_view text, KeyFileSink &sink) {
    bool in_subset = true;
    try {
        SchemaHandler handler(sink);
        read_yaml_subset(text, handler);
        handler.finish();
    } catch (const NotInSubset &) {
        in_subset = false;  // nothing was emitted: the subset reader checks before it emits
    }
    if (in_subset) return;
    read_with_yaml_cpp(text, sink);
}

void read_key_file(std::istream &in, KeyFileSink &sink) {
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    read_key_file(text, sink);
}

TableImage load_key_file(const std::string &path) {
    // The type first, and a non-blocking open: a FIFO (or a device) at the
    // path must fail at once, not hang nginx -t, a reload or a loader.
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
        throw KeyFileLoadError(path + ": stat() failed: " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        throw KeyFileLoadError(path + ": not a regular file");
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        throw KeyFileLoadError(path + ": open() failed: " + std::strerror(errno));
    }
    struct FdCloser {
        int fd;
        ~FdCloser() { ::close(fd); }
    } closer{fd};
    // The file may have been replaced between stat() and open().
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        throw KeyFileLoadError(path + ": not a regular file");
    }
    if (static_cast<std::uint64_t>(st.st_size) > kMaxKeyFileBytes) {
        throw KeyFileLoadError(path + ": the file is larger than 1 GiB");
    }
    // Not zeroed first: read() writes every byte.
    const auto size = static_cast<std::size_t>(st.st_size);
    std::unique_ptr<char[]> buffer(new char[size == 0 ? 1 : size]);
    std::size_t got = 0;
    while (got < size) {
        const ssize_t n = ::read(fd, buffer.get() + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            throw KeyFileLoadError(path +
                                   (n < 0 ? ": read() failed: " + std::string(std::strerror(errno))
                                          : std::string(": the file shrank while it was read")));
        }
        got += static_cast<std::size_t>(n);
    }
    try {
        return build_table(std::string_view(buffer.get(), size));
    } catch (const KeyFileError &e) {
        throw KeyFileLoadError(path + ":" + std::to_string(e.line()) + ": " + e.what());
    }
}

}  // namespace apikey
