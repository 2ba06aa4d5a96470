#!/usr/bin/perl
# Save TEXT to TARGET: temp file, syswrite, fsync, rename, fsync the directory.
#
# usage: perl syswrite.pl correct|buggy TARGET TEXT
#
# correct: syswrite in a loop until every byte is written (syswrite returns how many bytes
#          write(2) took, which can be fewer than asked when the disk fills up).
# buggy:   one syswrite whose count is only checked for undef (an error). A short write then
#          publishes a truncated file and the script exits 0.
use strict;
use warnings;
use Fcntl qw(O_WRONLY O_CREAT O_TRUNC O_RDONLY O_DIRECTORY);
use File::Basename qw(dirname);
use IO::Handle;

my ($mode, $target, $text) = @ARGV;
die "usage: $0 correct|buggy TARGET TEXT\n" unless defined $text && $mode =~ /^(correct|buggy)$/;
my $tmp = "$target.tmp";
$| = 1;
print "saving $target\n";

sub fail {
    my ($what) = @_;
    my $err = "$!";
    unlink $tmp;
    die "$what: $err\n";
}

sysopen(my $fh, $tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644) or die "$tmp: $!\n";
if ($mode eq 'buggy') {
    defined syswrite($fh, $text) or fail("write $tmp");    # the bug: the count is not checked
} else {
    my $done = 0;
    while ($done < length $text) {
        my $n = syswrite($fh, $text, length($text) - $done, $done);
        defined $n or fail("write $tmp");
        $done += $n;
    }
}
$fh->sync or fail("fsync $tmp");
close $fh or fail("close $tmp");
print STDERR "progress: renaming $tmp\n";
rename $tmp, $target or fail("rename $tmp");
sysopen(my $dir, dirname($target), O_RDONLY | O_DIRECTORY) or die "directory of $target: $!\n";
$dir->sync or die "fsync directory of $target: $!\n";
close $dir or die "close directory of $target: $!\n";
print "saved\n";
