// The two ways apikeyctl fails, so main can pick the exit status (1 or 2)
// without parsing messages.
#pragma once

#include <stdexcept>

namespace apikey::cli {

// Something about the files or the system: exit status 1. what() names the
// file first ("path: reason") wherever there is one.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The command line itself is wrong: exit status 2, as getopt-style tools do.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

}  // namespace apikey::cli
