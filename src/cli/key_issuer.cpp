#include "cli/key_issuer.h"

#include "core/access_policy.h"
#include "core/digest.h"

namespace apikey::cli {

namespace {

std::string quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string declared_list(const KeyFileModel &model) {
    std::string out;
    for (const PrefixDecl &p : model.prefixes) {
        if (!out.empty()) out += ", ";
        out += p.prefix + " (" + std::string(environment_name(p.environment)) + ")";
    }
    return out;
}

}  // namespace

PrefixChoice choose_prefix(const KeyFileModel &model, const std::optional<std::string> &given,
                           Environment wanted, bool may_declare) {
    const std::string wanted_name(environment_name(wanted));
    PrefixChoice choice;

    if (model.prefixes.empty()) {
        choice.prefix = given.value_or("");
        if (wanted == Environment::none) return choice;
        if (!given || given->empty()) {
            throw EditError("the file declares no prefixes; give --prefix to declare one for " +
                            wanted_name);
        }
        if (!may_declare) throw EditError("the file declares no prefixes");
        if (!model.records.empty()) {
            throw EditError(
                "the file declares no prefixes, so its " + std::to_string(model.records.size()) +
                " key(s) are accepted whatever their prefix; declaring " + quoted(*given) +
                " would make every key without a declared prefix invalid. Add a \"prefixes:\" "
                "map with the prefixes of the existing keys by hand first");
        }
        choice.environment = wanted;
        choice.declare = true;
        return choice;
    }

    if (given) {
        for (const PrefixDecl &p : model.prefixes) {
            if (p.prefix != *given) continue;
            if (wanted != Environment::none && wanted != p.environment) {
                throw EditError("prefix " + quoted(*given) + " is declared for " +
                                std::string(environment_name(p.environment)) + ", not " +
                                wanted_name);
            }
            choice.prefix = p.prefix;
            choice.environment = p.environment;
            return choice;
        }
        if (!may_declare || wanted == Environment::none) {
            throw EditError("prefix " + quoted(*given) +
                            " is not declared in the file (declared: " + declared_list(model) +
                            ")" +
                            (may_declare ? "; add --environment live|test to declare it" : ""));
        }
        choice.prefix = *given;
        choice.environment = wanted;
        choice.declare = true;
        return choice;
    }

    const PrefixDecl *only = nullptr;
    std::size_t matches = 0;
    for (const PrefixDecl &p : model.prefixes) {
        if (wanted != Environment::none && p.environment != wanted) continue;
        only = &p;
        matches++;
    }
    if (matches == 1) {
        choice.prefix = only->prefix;
        choice.environment = only->environment;
        return choice;
    }
    if (matches == 0) {
        throw EditError("no prefix is declared for " + wanted_name +
                        " (declared: " + declared_list(model) +
                        "); give --prefix with --environment " + wanted_name + " to declare one");
    }
    throw EditError("the file declares several prefixes (" + declared_list(model) +
                    "); choose one with --prefix");
}

IssuedKey issue_key(KeyFileEditor &editor, const IssueRequest &request) {
    const PrefixChoice &choice = request.prefix;
    if (choice.declare) editor.add_prefix(choice.prefix, choice.environment);
    const KeyFileModel &model = editor.model();

    KeySpec spec = request.attributes;
    if (spec.id.empty()) {
        do {
            spec.id = generate_key_id(request.random);
        } while (model.find(spec.id));
    } else if (model.find(spec.id)) {
        throw EditError("a key with id " + quoted(spec.id) + " already exists");
    }

    // The module gives a key the environment of the longest declared prefix
    // it starts with: a key that happened to begin with a longer declared
    // prefix (e.g. "wf" + "k..." under "wfk_") would land in the wrong one.
    std::string key;
    for (int attempt = 0;; attempt++) {
        if (attempt == 1000)
            throw EditError("cannot generate a key that only matches prefix " +
                            quoted(choice.prefix));
        key = generate_key(choice.prefix, request.random_chars, request.random);
        bool shadowed = false;
        for (const PrefixDecl &p : model.prefixes) {
            if (p.prefix.size() > choice.prefix.size() &&
                key.compare(0, p.prefix.size(), p.prefix) == 0) {
                shadowed = true;
            }
        }
        if (!shadowed) break;
    }
    spec.hash = sha256(key);
    editor.append_record(spec, choice.prefix);

    // Proof, with the module's own code, that this key now opens this record.
    const KeyTable table = editor.model().image.table();
    const Identity id = identify_key(table, key);
    const KeyRecord *record = id.outcome == Outcome::accepted ? table.find(id.digest) : nullptr;
    if (!record || table.text(record->id) != spec.id || id.environment != choice.environment) {
        throw EditError("the new key would not be recognised by the module (prefix " +
                        quoted(choice.prefix) + "); nothing was written");
    }
    return {key, spec.id};
}

std::optional<std::string> known_prefix(const KeyFileModel &model,
                                        const std::optional<std::string> &note) {
    if (note) return note;
    if (model.prefixes.size() == 1) return model.prefixes.front().prefix;
    return std::nullopt;
}

}  // namespace apikey::cli
