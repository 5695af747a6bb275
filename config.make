# Per-object flags for the C++ sources: a global -std=c++17 would reach
# nginx's own C files, and -Werror turns that into a build failure.
for api_key_src in $ngx_addon_dir/src/*.cpp $ngx_addon_dir/src/core/*.cpp; do
    api_key_obj="$NGX_OBJS/addon/`basename \`dirname $api_key_src\``/`basename $api_key_src .cpp`.o"
    api_key_flags="-std=c++17 -fvisibility=hidden -Wextra"
    case "$api_key_src" in
    */core/*) api_key_flags="$api_key_flags -Wold-style-cast" ;;
    esac
    echo "$api_key_obj: CFLAGS += $api_key_flags" >> $NGX_MAKEFILE
done
