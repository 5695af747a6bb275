#include "cli/key_generator.h"

#include <openssl/err.h>
#include <openssl/rand.h>

#include <climits>
#include <stdexcept>
#include <vector>

#include "cli/errors.h"

namespace apikey::cli {

void openssl_random_bytes(unsigned char *out, std::size_t n) {
    while (n > 0) {
        const int chunk = n > INT_MAX ? INT_MAX : static_cast<int>(n);
        if (RAND_bytes(out, chunk) != 1) {
            char reason[256];
            ERR_error_string_n(ERR_get_error(), reason, sizeof reason);
            throw Error(std::string("the random generator failed: ") + reason);
        }
        out += chunk;
        n -= static_cast<std::size_t>(chunk);
    }
}

std::string random_string(std::string_view alphabet, std::size_t length,
                          const RandomBytes &source) {
    if (alphabet.size() < 2 || alphabet.size() > 256) {
        throw std::invalid_argument("random_string: alphabet must have 2 to 256 symbols");
    }
    const unsigned n = static_cast<unsigned>(alphabet.size());
    const unsigned limit = 256 - 256 % n;  // bytes below this map evenly onto the alphabet

    std::string out;
    out.reserve(length);
    // A batch a little larger than needed usually finishes in one call; at
    // worst (n = 129) half the bytes are rejected and we go round again.
    std::vector<unsigned char> batch(length + length / 4 + 8);
    while (out.size() < length) {
        source(batch.data(), batch.size());
        for (unsigned char b : batch) {
            if (b >= limit) continue;
            out.push_back(alphabet[b % n]);
            if (out.size() == length) break;
        }
    }
    return out;
}

std::string generate_key(std::string_view prefix, std::size_t random_chars,
                         const RandomBytes &source) {
    return std::string(prefix) + random_string(kBase62, random_chars, source);
}

std::string generate_key_id(const RandomBytes &source) {
    return "key_" + random_string(kBase36, kKeyIdRandomChars, source);
}

}  // namespace apikey::cli
